"""The names a command line offers (models, algorithms, presets), without importing torch.

`dslth-edge --help` lists these choices; importing the modules that implement them would
load torch (~250 MB, seconds on a small board) just to print help. The implementing
modules import these tuples, and tests/learn/test_names.py pins that they agree.
"""

from __future__ import annotations

__all__ = ["ALGORITHMS", "MODEL_NAMES", "PRESET_NAMES"]

#: the model zoo (dslth_edge.learn.models)
MODEL_NAMES = ("paper-cnn", "mcu-cnn", "resnet-8")
#: the update rules (dslth_edge.learn.algorithm)
ALGORITHMS = ("mce-pl", "consensus", "local", "dpsgd", "dpsgd-ft")
#: the algorithm constants' presets (dslth_edge.learn.algorithm.PRESETS)
PRESET_NAMES = ("paper", "default", "reference")
