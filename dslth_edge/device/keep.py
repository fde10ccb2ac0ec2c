"""What a node trains with: its profile's plan for a zoo model, as a per-layer contract.

:func:`plan_node` turns a profile's :class:`~dslth_edge.device.planner.Plan` into a
:class:`NodePlan`: one keep ratio per masked layer, the mask granularity, and the
output channel count each layer must end with (``None``: all of them). Every driver
(``train``, ``train --fleet``, ``simulate``, ``fleet run``) builds its node from it, and
config.json records it.

Routes (``route``):

``unstructured``
    the dense export fits the budgets: a weight-level mask at ``min(plan, 0.5)``.
``progressive``
    the budgets need channels removed: a weight-level mask at density 0.5 inside the
    kept channels, group sparsity on the scores, and channels dropped progressively
    (relative threshold) down to the plan's channel counts (:mod:`dslth_edge.learn.masking`).
``aligned``
    the budgets need channels removed: a weight-level mask at density 0.5 inside the
    kept channels, and channels dropped progressively down to the plan's counts in an
    order every node shares (the highest-indexed first), so every node ends with the
    first ``channels`` of each layer and the fleet's shrunk models are nested: the masks
    neighbours average describe the same channels. Asked for, or through a preset's
    ``structured_route`` (``AlgorithmConfig.structured_route``; every preset says
    ``progressive``: docs/algorithm.md, "Structured learning", has the measurements).
``channel``
    channel-level masks (whole output channels by mean score), at the plan's counts.

Residual coupling: channels that a residual add sums must be removed from every member
of the add together, and a node's members train their masks independently, so the
channels shrink could remove there (those dead in *every* member) are not known in
advance. :func:`plan_costs` therefore plans the layers an add couples (ResNet-8's stem,
each stack's second conv and its shortcut: :func:`residual_groups`) at their full
width and shrinks only the layers inside the blocks, whose channels nothing else
shares. What the plan counts is then what shrink can always deliver.

If no plan fits, :func:`plan_node` raises :class:`~dslth_edge.device.planner.PlanError`
(exit 2) in one line naming the device, the binding budget and the nearest feasible
setting; it never falls back silently.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from dslth_edge.device.planner import Plan, PlanError, plan, planned_channels
from dslth_edge.device.profiles import load_profile
from dslth_edge.errors import UsageError
from dslth_edge.learn.algorithm import PRESETS
from dslth_edge.cost.layers import LayerCost
from dslth_edge.cost.residual import residual_groups as cost_residual_groups
from dslth_edge.learn.masking import ChannelGate, MaskedLayer
from dslth_edge.learn.models import MODEL_NAMES, ModelSpec, build_model, layer_costs
from dslth_edge.learn.names import ROUTES, STRUCTURED_ROUTES

__all__ = ["MAX_LEARNING_KEEP", "ROUTES", "NodePlan", "plan_node", "plan_keep", "plan_costs", "residual_groups"]


#: Above this a mask has too little to choose: at keep 1.0 it keeps every weight and
#: learns nothing, and strong-lottery-ticket accuracy peaks near 0.5 (edge-popup, Fig. 2).
MAX_LEARNING_KEEP = 0.5

#: What ``granularity`` a driver may ask for (ROUTES): "unstructured" shrinks by channels only
#: when the budgets need it (by the preset's structured route, STRUCTURED_ROUTES);
#: "progressive", "aligned" and "channel" always plan channels.
#: The route of nodes that must shrink when no preset is named: the default preset's.
DEFAULT_STRUCTURED_ROUTE = PRESETS["default"].structured_route


@dataclass(frozen=True)
class NodePlan:
    """The per-layer contract one node trains under."""

    profile: str
    route: str  # "unstructured" | "progressive" | "aligned" | "channel" | "fixed" (--keep)
    granularity: str  # the masked layers' granularity ("unstructured" or "channel")
    keep: float  # the headline keep ratio (mask density inside the kept channels)
    keeps: tuple[float, ...]  # per masked layer: the ratio its mask is built with
    channels: tuple[int, ...] | None  # per masked layer: output channels at the end (None: all)
    note: str  # one line: which budget binds and why this route
    plan: Plan | None = None  # the planner's answer (None with --keep)

    @property
    def model_keep(self) -> float | list[float]:
        """What :class:`~dslth_edge.learn.models.ModelSpec` takes: one ratio when all layers share it."""
        return self.keeps[0] if len(set(self.keeps)) == 1 else list(self.keeps)

    @property
    def channel_order(self) -> str:
        """Which live channels the drop schedule removes first (:data:`~dslth_edge.learn.masking.CHANNEL_ORDERS`)."""
        return "index" if self.route == "aligned" else "score"

    @property
    def structured(self) -> bool:
        """True when the node must end with fewer channels than the model has."""
        return self.channels is not None

    def to_dict(self) -> dict[str, Any]:
        """What config.json records as the plan actually used."""
        return {
            "profile": self.profile, "route": self.route, "granularity": self.granularity, "keep": self.keep,
            "keeps": list(self.keeps), "channels": None if self.channels is None else list(self.channels),
            "note": self.note,
            "predicted": None if self.plan is None else {c.name: {"predicted": c.predicted, "budget": c.budget, "ok": c.ok}
                                                         for c in self.plan.checks},
            "binding": None if self.plan is None else self.plan.binding,
            "params": None if self.plan is None else sum(layer.params for layer in self.plan.layers),
            "macs": None if self.plan is None else sum(layer.macs for layer in self.plan.layers),
        }


def residual_groups(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[frozenset[str], ...]:
    """Sets of masked layers whose output channels a residual add combines
    (:func:`dslth_edge.cost.residual.residual_groups`, the one analysis shrink checks against)."""
    return cost_residual_groups(model, input_shape, leaves=(MaskedLayer, ChannelGate))


def plan_costs(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerCost]:
    """:func:`~dslth_edge.learn.models.layer_costs` as the planner must see them: a layer
    that a residual add couples to others (:func:`residual_groups`) is not prunable, so
    it keeps its full width in the plan (see the module docstring)."""
    coupled = set().union(*residual_groups(model, input_shape))
    return [replace(c, prunable_out=False) if c.name in coupled else c for c in layer_costs(model, input_shape)]


def _structured(p: Plan, profile: str, route: str, density: float, note: str) -> NodePlan:
    full = tuple(layer.out_channels for layer in p.layers)
    chans = tuple(layer.channels for layer in p.layers)
    if route == "channel":
        keeps = tuple(layer.keep_out for layer in p.layers[:-1]) + (density,)  # the classifier: weight-level
        return NodePlan(profile, route, "channel", p.keep_ratio, keeps, chans if chans != full else None, note, p)
    keeps = tuple(density for _ in p.layers)
    return NodePlan(profile, route, "unstructured", density, keeps, chans if chans != full else None, note, p)


def _refusal(exc: PlanError, model_name: str, input_shape: tuple[int, int, int], num_classes: int,
             profile_name: str) -> PlanError:
    """The planner's one-line refusal for ``model_name``, naming another zoo model that fits if any."""
    head = f"no plan fits {model_name}: {exc}"
    profile = load_profile(profile_name)
    for other in MODEL_NAMES:
        if other == model_name:
            continue
        try:
            costs = plan_costs(build_model(ModelSpec(other, input_shape, num_classes, keep=1.0)), input_shape)
            p = plan(costs, profile, granularity="channel", density=MAX_LEARNING_KEEP)
        except (PlanError, UsageError):
            continue
        head = head.split("; nearest feasible:")[0] + f"; nearest feasible: --model {other} (keep {p.keep_ratio:.2f})"
        break
    return PlanError(head, binding=exc.binding)


def plan_node(
    model_name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    profile_name: str,
    granularity: str = "unstructured",
    *,
    keep: float | None = None,
    structured_route: str | None = None,
) -> NodePlan:
    """The plan one node trains with (see the module docstring for the routes).

    ``keep`` overrides the planned ratio (no budget check: the note says so); with a
    structured ``granularity`` it is also the channel fraction. ``structured_route``
    (the preset's ``structured_route``; None: the default preset's) is the route of a
    node whose dense export does not fit when ``granularity`` is "unstructured".
    """
    if granularity not in ROUTES:
        raise UsageError(f"unknown granularity {granularity!r}; choose one of {', '.join(ROUTES)}")
    route = DEFAULT_STRUCTURED_ROUTE if structured_route is None else structured_route
    if route not in STRUCTURED_ROUTES:
        raise UsageError(f"unknown structured route {route!r}; choose one of {', '.join(STRUCTURED_ROUTES)}")
    if model_name not in MODEL_NAMES:
        raise UsageError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}")
    profile = load_profile(profile_name)
    model = build_model(ModelSpec(model_name, input_shape, num_classes, keep=1.0))
    costs = plan_costs(model, input_shape)
    n = len(costs)
    if keep is not None:
        if not 0.0 < keep <= 1.0:
            raise UsageError(f"--keep must be in (0, 1], got {keep}")
        if granularity == "unstructured":
            return NodePlan(profile.name, "fixed", "unstructured", keep, (keep,) * n, None, "--keep")
        full = tuple(c.out_channels for c in costs)
        m = profile.compute.channel_multiple
        chans = tuple(planned_channels(c.out_channels, keep, m) if c.prunable_out else c.out_channels for c in costs)
        if granularity == "channel":
            keeps = tuple(ch / c.out_channels for ch, c in zip(chans[:-1], costs[:-1])) + (MAX_LEARNING_KEEP,)
            return NodePlan(profile.name, "channel", "channel", keep, keeps, chans if chans != full else None,
                            "--keep as the channel fraction (budgets not checked)")
        return NodePlan(profile.name, granularity, "unstructured", MAX_LEARNING_KEEP, (MAX_LEARNING_KEEP,) * n,
                        chans if chans != full else None, "--keep as the channel fraction (budgets not checked)")
    if granularity == "unstructured":
        try:
            p = plan(costs, profile, granularity="unstructured")
        except PlanError as exc:
            try:
                p = plan(costs, profile, granularity="channel", density=MAX_LEARNING_KEEP)
            except PlanError as exc2:
                raise _refusal(exc2, model_name, input_shape, num_classes, profile_name) from exc2
            why = f"the dense export does not fit ({exc.binding} binds)"
            return _structured(p, profile.name, route, MAX_LEARNING_KEEP,
                               f"channels removed: {why}; plan {p.explain()}")
        k = min(p.keep_ratio, MAX_LEARNING_KEEP)
        note = (f"plan allows {p.keep_ratio:.2f} ({p.binding} binds); capped at {MAX_LEARNING_KEEP}, the densest mask "
                "that still learns" if p.keep_ratio > MAX_LEARNING_KEEP else f"plan: {p.explain()}")
        return NodePlan(profile.name, "unstructured", "unstructured", k, (k,) * n, None, note, p)
    density = MAX_LEARNING_KEEP if granularity in STRUCTURED_ROUTES else None
    try:
        p = plan(costs, profile, granularity="channel", density=density)
    except PlanError as exc:
        raise _refusal(exc, model_name, input_shape, num_classes, profile_name) from exc
    return _structured(p, profile.name, granularity, MAX_LEARNING_KEEP, f"plan ({granularity}): {p.explain()}")


def plan_keep(model_name: str, input_shape: tuple[int, int, int], num_classes: int, profile_name: str,
              granularity: str) -> tuple[float, str]:
    """The headline keep ratio and its note (see :func:`plan_node`, which drivers use)."""
    np_ = plan_node(model_name, input_shape, num_classes, profile_name, granularity)
    return np_.keep, np_.note
