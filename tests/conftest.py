"""Suite-wide rules: in CI (``$CI`` set) a skip is a failure unless its reason is allow-listed.

Collection-time skips count too: ``pytest.importorskip`` and module-level ``pytest.skip``
turn the whole module's collect report into a skip, which :func:`pytest_make_collect_report`
catches; test-level skips (markers, ``pytest.skip``, fixtures) are caught by
:func:`pytest_runtest_makereport`. An expected failure (xfail) is held to the same rule.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest

#: The only skips CI accepts: a reason must contain one of these strings. Each entry says
#: why the test cannot run in CI at all (not merely "not installed": the Makefile installs
#: everything the suite needs, so such a skip in CI means a broken environment).
SKIP_ALLOW_LIST: dict[str, str] = {
    # tests/transport/test_fleet_mqtt.py::test_acl_and_wrong_password[embedded]: amqtt, the
    # embedded broker, reads no Mosquitto password or ACL file, so there is nothing to test;
    # the same test runs on Mosquitto (its [mosquitto] case), which must not skip.
    "the embedded broker (amqtt) reads no Mosquitto password file or ACL file":
        "amqtt has no password/ACL file support; covered on Mosquitto",
}


def _in_ci() -> bool:
    return bool(os.environ.get("CI"))


def skip_reason(report: Any) -> str:
    """The reason text of a skipped (or xfailed) test or collect report."""
    if getattr(report, "wasxfail", None) is not None:
        return f"xfail: {report.wasxfail}"
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def allowed_skip(reason: str) -> bool:
    """Whether ``reason`` matches an entry of :data:`SKIP_ALLOW_LIST`."""
    return any(entry in reason for entry in SKIP_ALLOW_LIST)


def _enforce(report: Any, where: str) -> None:
    if _in_ci() and report.skipped:
        reason = skip_reason(report)
        if not allowed_skip(reason):
            report.outcome = "failed"
            report.longrepr = (f"CI must run this {where}, but it skipped: {reason} "
                               "(tests/conftest.py SKIP_ALLOW_LIST lists the only skips CI accepts)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    _enforce(outcome.get_result(), "test")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield
    _enforce(outcome.get_result(), "module")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/<id> of a finished solo mcu-cnn node (channel masks, keep 0.3): its node-0 has mask.npz."""
    from dslth_edge.fleet.solo import TrainOptions, train

    out = tmp_path_factory.mktemp("export-run") / "run"
    train(TrainOptions(profile="x86-host", dataset="synthetic", model="mcu-cnn", rounds=20, keep=0.3,
                       granularity="channel", out=str(out), eval_every=10, checkpoint_every=10))
    assert (out / "node-0" / "mask.npz").is_file()
    return out


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models in lock-step: one torch thread (several only spin on a shared machine), and
    the same thread count as the simulator's worker processes and the fleet's node
    processes, so their float sums agree bit for bit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
