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
``channel``
    channel-level masks (whole output channels by mean score), at the plan's counts.

If no plan fits, :func:`plan_node` raises :class:`~dslth_edge.device.planner.PlanError`
(exit 2) in one line naming the device, the binding budget and the nearest feasible
setting; it never falls back silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dslth_edge.device.planner import Plan, PlanError, plan, planned_channels
from dslth_edge.device.profiles import load_profile
from dslth_edge.errors import UsageError
from dslth_edge.learn.models import MODEL_NAMES, ModelSpec, build_model, layer_costs

__all__ = ["MAX_LEARNING_KEEP", "ROUTES", "NodePlan", "plan_node", "plan_keep"]


#: Above this a mask has too little to choose: at keep 1.0 it keeps every weight and
#: learns nothing, and strong-lottery-ticket accuracy peaks near 0.5 (edge-popup, Fig. 2).
MAX_LEARNING_KEEP = 0.5

#: What ``granularity`` a driver may ask for: "unstructured" shrinks by channels only when
#: the budgets need it (progressive route); "progressive" and "channel" always plan channels.
ROUTES = ("unstructured", "progressive", "channel")


@dataclass(frozen=True)
class NodePlan:
    """The per-layer contract one node trains under."""

    profile: str
    route: str  # "unstructured" | "progressive" | "channel" | "fixed" (--keep)
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
            costs = layer_costs(build_model(ModelSpec(other, input_shape, num_classes, keep=1.0)), input_shape)
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
) -> NodePlan:
    """The plan one node trains with (see the module docstring for the routes).

    ``keep`` overrides the planned ratio (no budget check: the note says so); with a
    structured ``granularity`` it is also the channel fraction.
    """
    if granularity not in ROUTES:
        raise UsageError(f"unknown granularity {granularity!r}; choose one of {', '.join(ROUTES)}")
    if model_name not in MODEL_NAMES:
        raise UsageError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}")
    profile = load_profile(profile_name)
    model = build_model(ModelSpec(model_name, input_shape, num_classes, keep=1.0))
    costs = layer_costs(model, input_shape)
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
        return NodePlan(profile.name, "progressive", "unstructured", MAX_LEARNING_KEEP, (MAX_LEARNING_KEEP,) * n,
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
            return _structured(p, profile.name, "progressive", MAX_LEARNING_KEEP,
                               f"channels removed: {why}; plan {p.explain()}")
        k = min(p.keep_ratio, MAX_LEARNING_KEEP)
        note = (f"plan allows {p.keep_ratio:.2f} ({p.binding} binds); capped at {MAX_LEARNING_KEEP}, the densest mask "
                "that still learns" if p.keep_ratio > MAX_LEARNING_KEEP else f"plan: {p.explain()}")
        return NodePlan(profile.name, "unstructured", "unstructured", k, (k,) * n, None, note, p)
    density = MAX_LEARNING_KEEP if granularity == "progressive" else None
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
