"""Suite-wide rules: in CI, a test may not skip for want of something the Makefile installs."""

from __future__ import annotations

import os
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
