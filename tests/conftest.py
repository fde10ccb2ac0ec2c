"""Suite-wide rules: in CI, a test may not skip for want of something the Makefile installs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

#: skip reasons that mean "a package is missing": the Makefile installs these (Debian's
#: mosquitto and dataset-fashion-mnist, the tflite-runtime venv), so in CI they must run
_INSTALLABLE = ("not installed", "not installable")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if any(marker in reason for marker in _INSTALLABLE):
            report.outcome = "failed"
            report.longrepr = f"CI must run this test, but it skipped: {reason}"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/<id> of a finished solo mcu-cnn node (channel masks, keep 0.3): its node-0 has mask.npz."""
    from dslth_edge.fleet.solo import TrainOptions, train

    out = tmp_path_factory.mktemp("export-run") / "run"
    train(TrainOptions(profile="x86-host", dataset="synthetic", model="mcu-cnn", rounds=20, keep=0.3,
                       granularity="channel", out=str(out), eval_every=10, checkpoint_every=10))
    assert (out / "node-0" / "mask.npz").is_file()
    return out
