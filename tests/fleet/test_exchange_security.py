"""Verify, then store: no payload a member forges, replays or floods changes what a receiver
decodes from another sender; one collection loop for masks and dense weights. No broker needed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dslth_edge.fleet.dense_exchange import DenseExchange
from dslth_edge.fleet.exchange import Exchange, key_request
from dslth_edge.fleet.plan import FleetOptions, make_node, plan_fleet
from dslth_edge.transport.identity import Identity, generate_keys
from dslth_edge.transport.memory import MemoryHub

SHAPES = [(8, 16)]
FP = bytes(range(32))


def exchange(i: int, identity: Identity | None = None, **kw: object) -> Exchange:
    return Exchange(node_id=i, shapes=SHAPES, fingerprint=FP, fleet="t", identity=identity, **kw)  # type: ignore[arg-type]


def masks(seed: int, ones: int) -> list[torch.Tensor]:
    flat = np.zeros(128, dtype=bool)
    flat[np.random.default_rng(seed).choice(128, ones, replace=False)] = True
    return [torch.from_numpy(flat.reshape(8, 16))]


def collect(ex: Exchange, transport: object, rnd: int, expected: set[int]):  # noqa: ANN201
    return ex.collect(transport, rnd, expected, time.monotonic() + 5)  # type: ignore[arg-type]


def test_forged_frame_for_another_sender_does_not_poison_its_base() -> None:
    """The issue's reproduction: member 1 publishes, on its own topic, a valid frame claiming
    sender 0's round 0 (all ones). It is rejected, and node 0's next delta still decodes to
    node 0's real masks (it used to decode against the forged base: 127 ones instead of 36)."""
    hub = MemoryHub()
    t0, t1, t2 = hub.connect(0, [2]), hub.connect(1, [2]), hub.connect(2, [0, 1])
    ex0, ex1, ex2 = exchange(0), exchange(1), exchange(2)
    m0_r0, m0_r1 = masks(0, 36), masks(1, 36)
    forger = exchange(0)  # member 1 crafts a frame naming sender 0 (CRC mode: no secret needed)
    t0.publish(ex0.encode(m0_r0, 0))
    t1.publish(ex1.encode(masks(5, 36), 0))
    got = collect(ex2, t2, 0, {0, 1})
    assert torch.equal(got.frames[0][0], m0_r0[0])
    t1.publish(forger.encode([torch.ones(8, 16, dtype=torch.bool)], 0))  # on node 1's topic
    t1.publish(ex1.encode(masks(6, 36), 1))
    t0.publish(ex0.encode(m0_r1, 1))
    assert ex0.last_kind == "delta"
    got = collect(ex2, t2, 1, {0, 1})
    assert got.rejected == 1
    assert int(got.frames[0][0].sum()) == 36 and torch.equal(got.frames[0][0], m0_r1[0])


def test_frame_stored_only_once_taken() -> None:
    """A duplicate of (sender, round) with other content is not stored over the base."""
    hub = MemoryHub()
    t0, t2 = hub.connect(0, [2]), hub.connect(2, [0])
    ex0, ex2 = exchange(0), exchange(2)
    t0.publish(ex0.encode(masks(0, 36), 0))
    collect(ex2, t2, 0, {0})
    t0.publish(exchange(0).encode([torch.ones(8, 16, dtype=torch.bool)], 0))  # another round-0 frame
    m1 = masks(1, 36)
    t0.publish(ex0.encode(m1, 1))
    got = collect(ex2, t2, 1, {0})
    assert got.duplicates == 1 and torch.equal(got.frames[0][0], m1[0])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    generate_keys("t", 3, d, epoch=7)
    return d


def ident(keys: Path, i: int, epoch: int | None = None) -> Identity:
    return Identity.ed25519(fleet="t", node_id=i, roster_path=keys / "roster.json", key_path=keys / f"node-{i}.key",
                            epoch=epoch)


def test_ed25519_member_cannot_speak_for_another(keys: Path) -> None:
    """Signed by member 1 but naming sender 0, on 1's topic or (ACL-less broker) on 0's: refused;
    a frame of another run epoch and a round past the run are refused; 0's real frame is taken."""
    hub = MemoryHub()
    t0, t1, t2 = hub.connect(0, [2]), hub.connect(1, [2]), hub.connect(2, [0, 1])
    ex0, ex2 = exchange(0, ident(keys, 0), max_round=10), exchange(2, ident(keys, 2), max_round=10)
    forged = exchange(0, ident(keys, 1)).encode([torch.ones(8, 16, dtype=torch.bool)], 0)  # frame says 0, key is 1's
    t1.publish(forged)
    t0.publish(forged)  # as on a broker without ACL
    old_run = exchange(0, ident(keys, 0, epoch=6)).encode([torch.ones(8, 16, dtype=torch.bool)], 0)
    t0.publish(old_run)
    far = exchange(0, ident(keys, 0), max_round=None)
    t0.publish(far.encode(masks(3, 36), (1 << 32) - 1))
    m0 = masks(0, 36)
    t0.publish(ex0.encode(m0, 0))
    got = collect(ex2, t2, 0, {0})
    assert got.rejected == 4, got
    assert torch.equal(got.frames[0][0], m0[0])
    assert ex2.out_of_step(1) == set(), "a forged far-future round must not mark node 0 out of step"


def test_key_request_flood_is_rate_limited(keys: Path) -> None:
    """Fifty key requests a round from one member force a key frame at most every 3 rounds."""
    hub = MemoryHub()
    t0, t1 = hub.connect(0, [1]), hub.connect(1, [0])
    ex0, ex1 = exchange(0, ident(keys, 0)), exchange(1, ident(keys, 1))
    id1 = ident(keys, 1)
    kinds = []
    for rnd in range(12):
        t0.publish(ex0.encode(masks(rnd, 36), rnd))
        kinds.append(ex0.last_kind)
        for _ in range(50):
            t1.publish(id1.seal("ctl", rnd, key_request(0, rnd)), kind="ctl")
        t1.publish(ex1.encode(masks(100 + rnd, 36), rnd))
        got = collect(ex0, t0, rnd, {1})
        assert got.rejected >= 49
    assert kinds.count("key") <= 1 + 12 // 3, kinds
    # unsigned requests are refused outright
    t1.publish(key_request(0, 12), kind="ctl")
    t1.publish(ex1.encode(masks(200, 36), 12))
    assert collect(ex0, t0, 12, {1}).rejected == 1


def test_dense_shares_the_loop(keys: Path) -> None:
    """Dense payloads: sealed and sender-checked, a configurable future window, stale senders heard again."""
    hub = MemoryHub()
    t0, t1 = hub.connect(0, [1]), hub.connect(1, [0])
    d0 = DenseExchange(node_id=0, num_params=5, fingerprint=FP, identity=ident(keys, 0), window=8)
    d1 = DenseExchange(node_id=1, num_params=5, fingerprint=FP, identity=ident(keys, 1), window=8)
    d1.neighbours = {0}
    vec = torch.arange(5, dtype=torch.float32)
    t0.publish(d0.encode([vec], 7))  # 7 rounds ahead: inside the window of 8
    t0.publish(DenseExchange(node_id=0, num_params=5, fingerprint=FP, identity=ident(keys, 1)).encode([vec + 1], 0))
    got = d1.collect(t1, 0, set(), time.monotonic() + 1)
    assert got.rejected == 1 and not got.frames
    got = d1.collect(t1, 7, {0}, time.monotonic() + 1)
    assert torch.equal(got.frames[0][0], vec)


@pytest.mark.parametrize("mixing", ["metropolis", "uniform"])
def test_dpsgd_mixing_weights(mixing: str) -> None:
    """On a star (degrees 3 and 1) Metropolis-Hastings averaging keeps the fleet's mean
    parameters (doubly stochastic); the uniform mean over self and neighbours does not."""
    from dslth_edge.learn.dense import flat_parameters, set_flat_parameters

    opts = FleetOptions(nodes=4, topology="star", dataset="synthetic", model="mcu-cnn", algorithm="dpsgd", rounds=2,
                        eval_every=0, overrides={"mixing": mixing})
    plan = plan_fleet(opts)
    nodes = [make_node(plan, i, None, None) for i in range(4)]
    for i, node in enumerate(nodes):
        set_flat_parameters(node.model, torch.full_like(flat_parameters(node.model), float(i * i)))
    before = [flat_parameters(n.model).clone() for n in nodes]
    for i, node in enumerate(nodes):
        node.algorithm.merge({j: [before[j]] for j in node.neighbours}, {}, node.neighbours)
    mean_before = torch.stack(before).mean(0)
    mean_after = torch.stack([flat_parameters(n.model) for n in nodes]).mean(0)
    if mixing == "metropolis":
        assert torch.allclose(mean_after, mean_before, atol=1e-5)
        assert nodes[1].algorithm.setup.mixing_weights == {0: 0.25}  # 1 / (1 + max(3, 1))
    else:
        assert not torch.allclose(mean_after, mean_before, atol=1e-3)


class Verified:
    """A memory transport with the MQTT transport's table of verified incarnations."""

    def __init__(self, inner: object, table: dict[int, int]) -> None:
        self.inner, self.table = inner, table

    def peer_incarnation(self, sender: int) -> int | None:
        return self.table.get(sender)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_restarted_sender_replaces_its_old_bases(keys: Path) -> None:
    """Node 0 restarts after round 3 and re-does rounds 2 and 3 with other masks: its new
    incarnation's frames are taken (not ignored as duplicates) and become the bases of its
    later deltas; its old incarnation's frames are refused from then on."""
    hub = MemoryHub()
    t0, t2 = hub.connect(0, [2]), hub.connect(2, [0])
    old, new = exchange(0, ident(keys, 0)), exchange(0, ident(keys, 0))  # two processes of node 0
    table: dict[int, int] = {0: old.identity.incarnation}  # type: ignore[union-attr]
    ex2, seen = exchange(2, ident(keys, 2)), Verified(t2, table)
    sent_old = []
    for rnd in range(4):
        sent_old.append(old.encode(masks(rnd, 36), rnd))
        t0.publish(sent_old[-1])
        collect(ex2, seen, rnd, {0})
    table[0] = new.identity.incarnation  # type: ignore[union-attr]  # the transport verified its new hello
    redone = {rnd: masks(50 + rnd, 36) for rnd in range(2, 6)}
    for rnd in (2, 3):
        t0.publish(new.encode(redone[rnd], rnd))
    t0.publish(sent_old[3])  # the old process's frame, replayed
    got = collect(ex2, seen, 4, set())
    assert got.duplicates == 0 and got.rejected == 1
    assert torch.equal(got.latest[0][0], redone[3][0])
    t0.publish(new.encode(redone[4], 4))
    assert new.last_kind == "delta"
    got = collect(ex2, seen, 4, {0})
    assert torch.equal(got.frames[0][0], redone[4][0]), "a delta decoded on the old incarnation's base"


def test_payloads_of_an_unverified_incarnation_move_nothing(keys: Path) -> None:
    """A signed frame of node 0's other incarnation (a recording of another run) is refused
    before anything is decoded or stored: no newest round, no base, no key request."""
    hub = MemoryHub()
    t0, t2 = hub.connect(0, [2]), hub.connect(2, [0])
    live, recorded = exchange(0, ident(keys, 0)), exchange(0, ident(keys, 0))
    ex2 = exchange(2, ident(keys, 2))
    seen = Verified(t2, {0: live.identity.incarnation})  # type: ignore[union-attr]
    for rnd in range(3):  # a later-round delta too: it used to mark node 0 as being past round 0
        t0.publish(recorded.encode(masks(rnd, 36), rnd))
    got = collect(ex2, seen, 0, set())
    assert got.rejected == 3 and got.key_requests_sent == 0 and not got.latest
    assert ex2.newest == {} and ex2.store.rounds(0) == []


def test_an_unsealed_delta_on_a_missing_base_moves_no_round() -> None:
    """Without seals, a delta's round is not authenticated: asking for a key is all it does."""
    hub = MemoryHub()
    t0, t2 = hub.connect(0, [2]), hub.connect(2, [0])
    ex0, ex2 = exchange(0), exchange(2)
    ex0.encode(masks(0, 36), 0)  # not delivered: node 2 lacks the base
    t0.publish(ex0.encode(masks(1, 36), 5))
    got = collect(ex2, t2, 0, set())
    assert got.key_requests_sent == 1 and ex2.newest == {} and ex2.out_of_step(0) == set()
