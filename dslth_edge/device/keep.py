"""The keep ratio a node trains with: its profile's plan for a zoo model, capped where masks stop learning."""

from __future__ import annotations

from dslth_edge.device.planner import plan
from dslth_edge.device.profiles import load_profile
from dslth_edge.learn.models import ModelSpec, build_model, layer_costs

__all__ = ["MAX_LEARNING_KEEP", "plan_keep"]


#: Above this a mask has too little to choose: at keep 1.0 it keeps every weight and
#: learns nothing, and strong-lottery-ticket accuracy peaks near 0.5 (edge-popup, Fig. 2).
MAX_LEARNING_KEEP = 0.5


def plan_keep(model_name: str, input_shape: tuple[int, int, int], num_classes: int, profile_name: str, granularity: str) -> tuple[float, str]:
    """The keep ratio to train with: the profile's plan, capped at :data:`MAX_LEARNING_KEEP`.

    Returns the ratio and a note saying which budget binds (or that the cap does).
    """
    profile = load_profile(profile_name)
    model = build_model(ModelSpec(model_name, input_shape, num_classes, keep=1.0, granularity=granularity))
    p = plan(layer_costs(model, input_shape), profile, granularity=granularity)
    if p.keep_ratio > MAX_LEARNING_KEEP:
        return MAX_LEARNING_KEEP, f"plan allows {p.keep_ratio:.2f} ({p.binding} binds); capped at {MAX_LEARNING_KEEP}, the densest mask that still learns"
    return p.keep_ratio, f"plan: {p.explain()}"
