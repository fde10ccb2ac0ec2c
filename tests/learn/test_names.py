"""The torch-free name lists agree with what the implementing modules offer."""

from __future__ import annotations

from dslth_edge.learn import algorithm, models
from dslth_edge.learn.names import ALGORITHMS, MODEL_NAMES, PRESET_NAMES


def test_presets_match() -> None:
    assert tuple(algorithm.PRESETS) == PRESET_NAMES


def test_models_build_by_every_name() -> None:
    for name in MODEL_NAMES:
        assert models.arch_name(models.build_model(name, (1, 28, 28), 10)) == name


def test_algorithms_are_accepted() -> None:
    for name in ALGORITHMS:
        assert algorithm.get_preset("default", name).name == name
