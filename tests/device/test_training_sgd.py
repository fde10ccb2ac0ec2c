"""The lean SGD used for on-device training matches torch.optim.SGD bit for bit."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dslth_edge.learn.sgd import SGD


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(7, generator=g))]


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 5e-4), (0.5, 0.0), (0.0, 1e-2)])
def test_steps_and_state_dict_match_torch(momentum, weight_decay):
    ours, theirs = _params(0), _params(0)
    a = SGD(ours, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    b = torch.optim.SGD(theirs, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        for p, q, gr in zip(ours, theirs, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        if step == 3:  # a parameter without a gradient is left alone by both
            ours[1].grad = theirs[1].grad = None
        a.step()
        b.step()
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"][0] == sb["param_groups"][0]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        assert torch.equal(sa["state"][k]["momentum_buffer"], sb["state"][k]["momentum_buffer"])


def test_checkpoints_load_across_both_optimizers():
    ours, theirs = _params(2), _params(2)
    b = torch.optim.SGD(theirs, lr=0.05, momentum=0.9, weight_decay=1e-3)
    for p in theirs:
        p.grad = torch.ones_like(p)
    b.step()
    a = SGD(ours, lr=1.0)
    a.load_state_dict(b.state_dict())  # a checkpoint written by torch.optim.SGD
    for p, q in zip(ours, theirs):
        with torch.no_grad():
            p.copy_(q)
        p.grad, q.grad = torch.full_like(p, 0.5), torch.full_like(q, 0.5)
    a.step()
    b.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
    c = torch.optim.SGD(_params(3), lr=1.0, momentum=0.9)
    c.load_state_dict(a.state_dict())  # and the other way round
    assert c.param_groups[0]["lr"] == 0.05 and torch.equal(c.state_dict()["state"][0]["momentum_buffer"],
                                                            a.state_dict()["state"][0]["momentum_buffer"])
    with pytest.raises(ValueError, match="number of parameters"):
        SGD(_params(0)[:1], lr=1.0).load_state_dict(b.state_dict())


def test_zero_grad_and_empty():
    ps = _params(0)
    opt = SGD(ps, lr=0.1)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in ps)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)
    with pytest.raises(ValueError):
        SGD([], lr=0.1)


def test_creating_it_does_not_import_torch_dynamo():
    code = ("import sys, torch; from dslth_edge.learn.sgd import SGD; "
            "SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9).step(); "
            "print(any(m.startswith('torch._dynamo') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
