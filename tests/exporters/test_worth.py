"""The accuracy half of an export's verdict: near chance or far below the masked model is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dslth_edge.errors import EXIT_CODES, EXIT_OVER_BUDGET, EXIT_WEAK, WeakModelError
from dslth_edge.exporters.worth import CHANCE_MARGIN, MASKED_MARGIN, chance_accuracy, judge_worth, raise_if_weak_dicts


def test_exit_code_is_its_own() -> None:
    assert EXIT_WEAK not in (0, 1, 2, EXIT_OVER_BUDGET, 4, 5, 130)
    assert "not worth deploying" in EXIT_CODES[EXIT_WEAK]
    assert WeakModelError("x").exit_code == EXIT_WEAK


def test_chance_is_the_majority_share_of_the_nodes_test_labels() -> None:
    assert chance_accuracy(np.array([3, 3, 7, 7])) == (0.5, 2)
    assert chance_accuracy(np.array([1, 1, 1, 2])) == (0.75, 2)
    assert chance_accuracy(np.array([0, 1, 2, 3, 4])) == (0.2, 5)


def test_a_file_predicting_one_class_of_two_is_not_worth_deploying() -> None:
    labels = np.repeat([2, 5], 50)
    v = judge_worth(0.50, 0.51, labels, file="m.tflite")
    assert v.worth is False and v.reasons == ("chance",)
    assert v.line.startswith("not worth deploying: 50.0% on its 2 classes")
    assert "chance (50.0%)" in v.line
    # just outside the margin is worth deploying
    assert judge_worth(0.5 + CHANCE_MARGIN + 0.01, 0.56, labels).worth is True


def test_a_file_far_below_its_masked_model_is_not_worth_deploying() -> None:
    labels = np.repeat([0, 1, 2, 3], 25)
    v = judge_worth(0.70, 0.70 + MASKED_MARGIN + 0.02, labels)
    assert v.worth is False and v.reasons == ("masked",)
    assert "points below the node's masked model" in v.line
    ok = judge_worth(0.70, 0.70 + MASKED_MARGIN - 0.02, labels)
    assert ok.worth is True and ok.line.startswith("worth deploying: 70.0% on its 4 classes")


def test_no_test_samples_is_not_judged() -> None:
    v = judge_worth(None, None, np.array([], dtype=np.int64))
    assert v.worth is None and "not judged" in v.line
    raise_if_weak_dicts([v.to_dict()])  # nothing to refuse


def test_raise_names_every_weak_file() -> None:
    labels = np.repeat([0, 1], 10)
    weak = judge_worth(0.5, 0.9, labels, file="a.tflite").to_dict()
    good = judge_worth(0.95, 0.96, labels, file="b.tflite").to_dict()
    json.dumps(weak)  # report.json form
    with pytest.raises(WeakModelError, match=r"1 file\(s\) not worth deploying .*\n.*a\.tflite: not worth deploying"):
        raise_if_weak_dicts([weak, good])


def test_cli_refuses_a_weak_file_with_its_own_exit_code(trained_run, tmp_path, monkeypatch, capsys) -> None:
    """The wiring, end to end through the real CLI: a margin no file can meet makes every
    file weak (exit 6, one line per file, report.json records it); --allow-weak accepts it."""
    pytest.importorskip("torch_pruning")
    pytest.importorskip("onnxruntime")
    from dslth_edge.cli import cli, main
    from dslth_edge.cli.export import export
    import dslth_edge.exporters.worth as worth

    if "export" not in cli.commands:
        cli.add_command(export)
    monkeypatch.setattr(worth, "CHANCE_MARGIN", 1.0)
    out = tmp_path / "m.onnx"
    args = ["export", "--run", str(trained_run / "node-0"), "--format", "onnx", "--quantize", "none", "--no-dense",
            "--eval-samples", "100", "--out", str(out), "--allow-over-budget"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == EXIT_WEAK
    captured = capsys.readouterr()
    assert "node 0: not worth deploying" in captured.out
    assert "not worth deploying (pass --allow-weak to accept)" in captured.err
    doc = json.loads((tmp_path / "report.json").read_text())["exports"]["m.onnx"]
    assert doc["worth"]["worth"] is False and doc["worth"]["reasons"] == ["chance"]
    main([*args, "--allow-weak"])  # returns: exit 0
    assert "node 0: not worth deploying" in capsys.readouterr().out
