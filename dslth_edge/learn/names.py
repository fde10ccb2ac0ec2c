"""The names a command line offers (models, algorithms, presets), without importing torch.

`dslth-edge --help` lists these choices; importing the modules that implement them would
load torch (~250 MB, seconds on a small board) just to print help. The implementing
modules import these tuples, and tests/learn/test_names.py pins that they agree.
"""

from __future__ import annotations

__all__ = ["ALGORITHMS", "INIT_SCHEMES", "MODEL_NAMES", "PRESET_NAMES", "ROUTES", "STRUCTURED_ROUTES"]

#: the model zoo (dslth_edge.learn.models); "-x2"/"-x4": the same network with 2x/4x the channels
#: of every hidden layer (a width multiplier: strong lottery tickets need wide random networks)
MODEL_NAMES = ("paper-cnn", "mcu-cnn", "resnet-8", "mcu-cnn-x2", "mcu-cnn-x4", "authors-cnn")
#: the update rules (dslth_edge.learn.algorithm)
ALGORITHMS = ("mce-pl", "consensus", "local", "dpsgd", "dpsgd-ft")
#: the algorithm constants' presets (dslth_edge.learn.algorithm.PRESETS)
PRESET_NAMES = ("paper", "default", "reference")
#: how a node learns a model its budgets need shrunk (dslth_edge.device.keep, docs/algorithm.md):
#: progressive (its own sparsest channels go) or aligned (the fleet's shared channel order)
STRUCTURED_ROUTES = ("progressive", "aligned")
#: --granularity: unstructured (channels removed only where the budgets need it, by the
#: preset's structured route), a structured route, or whole-channel masks
ROUTES = ("unstructured", *STRUCTURED_ROUTES, "channel")
#: Fixed-weight and score initialisations (dslth_edge.learn.masking.init_weights).
#: "pytorch-default" is PyTorch's default Conv2d/Linear init, kaiming_uniform_(a=√5) =
#: U(±1/√fan_in): the authors' fixed weights and scores (ZhuoJTian/MCE-PL, layers_att3.py).
INIT_SCHEMES = ("kaiming-normal", "kaiming-uniform", "signed-constant", "pytorch-default")
