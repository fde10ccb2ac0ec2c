"""The node's options, declared once and applied to every command that runs nodes.

``train`` (alone and ``--fleet``), ``simulate`` and ``fleet run`` run the same Node code;
they take the same options from the groups below, so they cannot drift apart:

* :data:`NODE` — what one node learns and where it writes (model, algorithm, seeds, run dir);
* :data:`FLEET_SHAPE` — the fleet every device derives its split and neighbours from (and how
  often a node sends key frames);
* :data:`NETWORK` — how a node reaches the others over MQTT (broker, deadlines, TLS, credentials);
* :data:`OUTPUT` — how progress is printed (terminal bar, or lines every N rounds when logged).

Each option is one line: ``opt("--name", field, default=…, help=…)``. Its destination
``field`` is the name of a field of the library's option dataclasses (``TrainOptions``,
``FleetTrainOptions``, ``FleetOptions``, ``NodeRunOptions``), and :func:`pick` moves the
parsed values into them by field name. Adding an option is therefore one line here plus
the field in the dataclass that consumes it. A command applies groups with
:func:`apply`, overriding a default where its own differs (``defaults={"rounds": 100}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import click

from dslth_edge.errors import UsageError
from dslth_edge.learn.names import ALGORITHMS, INIT_SCHEMES, MODEL_NAMES, PRESET_NAMES, ROUTES
from dslth_edge.wire.delta import KEY_INTERVAL

__all__ = ["Opt", "opt", "apply", "pick", "NODE", "FLEET_SHAPE", "NETWORK", "OUTPUT", "SLICE", "KeepParam", "DATASETS",
           "ALGORITHM_OVERRIDES", "algorithm_overrides", "parse_deadline", "option_names"]

DATASETS = ("fashion-mnist", "cifar10", "synthetic")

#: NODE options that override the algorithm preset's constants (None: the preset's)
ALGORITHM_OVERRIDES = ("lr", "batch_size", "local_steps", "group_lasso", "drop_threshold", "ft_recompute")


@dataclass(frozen=True)
class Opt:
    """One click option: its flags, the field it fills, and click's keyword arguments."""

    flags: tuple[str, ...]
    field: str
    attrs: dict[str, Any]

    def build(self, default: Any = ..., prefix: str = "") -> click.Option:
        attrs = dict(self.attrs)
        if default is not ...:
            attrs["default"] = default
        if prefix and attrs.get("help"):
            attrs["help"] = f"{prefix} {attrs['help']}"
        if "default" in attrs and attrs["default"] is not None and not attrs.get("is_flag"):
            attrs.setdefault("show_default", True)
        return click.Option(list(self.flags) + [self.field], **attrs)


def opt(*flags: str, field: str | None = None, **attrs: Any) -> Opt:
    """One option line; ``field`` defaults to the long flag's name with dashes as underscores."""
    name = field or flags[0].lstrip("-").replace("-", "_")
    return Opt(tuple(flags), name, attrs)


class KeepParam(click.ParamType):
    """``--keep``: a ratio (a float) or a per-layer-type spec (the text, checked)."""

    name = "keep"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | str:
        from dslth_edge.learn.keep_spec import parse_keep

        if isinstance(value, float):
            return value
        try:
            spec = parse_keep(str(value))
        except UsageError as exc:
            self.fail(str(exc), param, ctx)
        return spec.uniform if spec.uniform is not None else str(value)


# ------------------------------------------------------------------------------ the groups
NODE: tuple[Opt, ...] = (
    opt("--dataset", default="fashion-mnist", type=click.Choice(DATASETS), help="Training data."),
    opt("--data-dir", default=None, help="Dataset directory (fashion-mnist default: /usr/share/datasets/fashion-mnist)."),
    opt("--model", default="paper-cnn", type=click.Choice(MODEL_NAMES), help="Model from the zoo."),
    opt("--rounds", default=200, type=click.IntRange(min=1), help="Rounds to train (a resumed run may be given more)."),
    opt("--keep", default=None, type=KeepParam(),
        help="Fraction of weights each layer keeps, or per layer type in a fleet: conv=0.3,fc=0.9 "
             "(default: the preset's, else the profile's plan)."),
    opt("--granularity", default="unstructured", type=click.Choice(ROUTES),
        help="unstructured: weight-level masks, channels removed only where the profile's budgets need it (by the "
             "preset's structured route); progressive: always plan channels (group sparsity + progressive drop of "
             "the node's sparsest); aligned: always plan channels, dropped progressively in the order every node "
             "shares (nested models); channel: whole-channel masks."),
    opt("--algorithm", default=None, type=click.Choice(ALGORITHMS),
        help="Update rule (default: mce-pl in a fleet, local alone)."),
    opt("--preset", default="default", type=click.Choice(PRESET_NAMES), help="Algorithm constants."),
    opt("--lr", default=None, type=float, help="Learning rate on the scores (preset's by default)."),
    opt("--batch-size", default=None, type=click.IntRange(min=1), help="Mini-batch size (preset's by default)."),
    opt("--local-steps", default=None, type=click.IntRange(min=1), help="Local steps per round (preset's by default)."),
    opt("--group-lasso", default=None, type=float, help="Group-lasso weight λ over output channels."),
    opt("--drop-threshold", default=None, type=float,
        help="Drop channels keeping less than this fraction of their layer's keep ratio (relative, in [0, 1])."),
    opt("--ft-recompute", is_flag=True, default=None, help="Fine-tune (5) with a fresh gradient instead of the step's."),
    opt("--stale-after", default=3, type=click.IntRange(min=1),
        help="Rounds of silence before a neighbour leaves the average."),
    opt("--seed", default=0, type=int, help="The node's seed (partition, scores, batch order)."),
    opt("--weight-seed", default=None, type=int, help="Seed of the fleet's fixed weights (default: --seed)."),
    opt("--weight-init", default=None, type=click.Choice(INIT_SCHEMES),
        help="Fixed weights' initialisation (default: the preset's; paper: pytorch-default, U(±1/√fan_in))."),
    opt("--score-init", default=None, type=click.Choice(INIT_SCHEMES),
        help="Initial scores' initialisation (default: the preset's; paper: pytorch-default)."),
    opt("--eval-every", default=25, type=click.IntRange(min=0), help="Evaluate every N rounds (0: only at the end)."),
    opt("--checkpoint-every", default=25, type=click.IntRange(min=1), help="Checkpoint every N rounds."),
    opt("--out", default=None, help="Run directory (default: a new one under runs/)."),
    opt("--resume", is_flag=True, help="Continue the run in --out from its checkpoint (an error when there is none)."),
    opt("--resume-or-start", is_flag=True,
        help="Resume when --out has a checkpoint, else start fresh (for restart loops)."),
    opt("--overwrite", is_flag=True, help="Delete the run in --out first, then start fresh."),
    opt("--for-device", is_flag=True,
        help="The profile cannot train (an MCU): this host trains on that device's behalf."),
)

FLEET_SHAPE: tuple[Opt, ...] = (
    opt("--nodes", default=20, type=click.IntRange(min=1), help="Number of nodes N (the same on every device)."),
    opt("--topology", default="ring", help="ring | torus | kregular:K | er:P | full | star | an adjacency file."),
    opt("--partition", default="iid", help="iid | classes:K | dirichlet:A | file:PATH."),
    opt("--partition-file", default=None, help="A (nodes x classes) count matrix, e.g. ../shared/paper/train_counts_4.txt."),
    opt("--scarce", default=None, type=click.IntRange(min=1), help="At most N training samples per node."),
    opt("--test-size", default=None, type=click.IntRange(min=1), help="Test samples per node (default: a disjoint share)."),
    opt("--key-interval", default=KEY_INTERVAL, type=click.IntRange(min=1),
        help="Rounds between a node's periodic key frames; deltas in between (a node that misses one asks for a key "
             "frame). Traffic only: the masks learned are the same."),
)

NETWORK: tuple[Opt, ...] = (
    opt("--broker", default="mqtt://127.0.0.1:1883", help="Broker URL, mqtt:// or mqtts://."),
    opt("--round-deadline", field="round_deadline", default="auto",
        help="Seconds to wait for neighbours' masks, or 'auto' (adaptive)."),
    opt("--deadline-max", field="deadline_max_s", default=60.0, type=float, help="Upper bound of the adaptive deadline (s)."),
    opt("--start-timeout", field="start_timeout_s", default=120.0, type=float,
        help="Wait this long for neighbours before round 0 (s)."),
    opt("--allow-solo", is_flag=True, help="Exit 0 even when no neighbour was ever heard (default: exit 4)."),
    opt("--ca", field="ca_file", default=None, help="CA certificate for mqtts://."),
    opt("--cert", field="cert_file", default=None, help="Client certificate (mqtts://)."),
    opt("--key", field="key_file", default=None, help="Client private key (mqtts://)."),
    opt("--tls-insecure", field="insecure", is_flag=True, help="Skip the broker host-name check (test set-ups only)."),
    opt("--username", default=None, help="MQTT user (default $DSLTH_MQTT_USERNAME)."),
    opt("--password-file", default=None, help="File holding the MQTT password (default $DSLTH_MQTT_PASSWORD)."),
    opt("--fleet-key-file", default=None, help="File holding the fleet's HMAC key for frames (default $DSLTH_FLEET_KEY)."),
    opt("--roster", default=None, help="Fleet roster (from `dslth-edge keys init`): Ed25519 identities for every node."),
    opt("--node-key", default=None, help="This node's private key (default: node-<id>.key next to the roster)."),
    opt("--run-epoch", default=None, type=click.IntRange(min=0, max=2**64 - 1),
        help="Run epoch frames are bound to (default: the roster's; 0 without a roster)."),
    opt("--fixed-epoch", is_flag=True,
        help="Old behaviour, not recommended: trust the run epoch alone (a recording of an earlier run of the same "
             "epoch replays). Default: every run is bound to fresh incarnations the nodes verify."),
    opt("--mqtt-protocol", default="auto", type=click.Choice(["auto", "5", "3.1.1"]), help="MQTT version."),
)

#: ``fleet run`` over a shared broker: this process runs a slice of the fleet
SLICE: tuple[Opt, ...] = (
    opt("--only", default=None,
        help="Run only these nodes, e.g. 0-3,8 (the others run elsewhere against the same --broker)."),
)

OUTPUT: tuple[Opt, ...] = (
    opt("--log-every", default=None, type=click.IntRange(min=1),
        help="Without a terminal: one progress line every N rounds (default: about 20 lines a run)."),
    opt("--log-format", default="text", type=click.Choice(["text", "json"]),
        help="Progress and warnings as text lines or as JSON objects (for log shippers)."),
    opt("--json", field="as_json", is_flag=True, help="Print the final result as JSON (no progress display)."),
)


def apply(*groups: Iterable[Opt], defaults: dict[str, Any] | None = None, prefix: dict[str, str] | None = None,
          skip: Iterable[str] = ()) -> Callable[[click.Command], click.Command]:
    """Decorator adding the groups' options to a click command, in declaration order.

    ``defaults`` maps a field to this command's default; ``prefix`` maps a field to a help
    prefix (``"[fleet]"``); ``skip`` leaves fields out.
    """
    defaults, prefix, skipped = defaults or {}, prefix or {}, set(skip)
    chosen = [o for g in groups for o in g if o.field not in skipped]

    def decorate(cmd: Any) -> Any:
        built = [o.build(defaults.get(o.field, ...), prefix.get(o.field, "")) for o in chosen]
        if isinstance(cmd, click.Command):  # above @click.command: append in order
            params = cmd.params
            params.extend(built)
        else:  # below it, like @click.option: click reverses the memo, so add in reverse
            params = cmd.__dict__.setdefault("__click_params__", [])
            params.extend(reversed(built))
        names = [p.name for p in params]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise TypeError(f"options declared twice: {clash}")
        return cmd

    return decorate


def option_names(*groups: Iterable[Opt]) -> list[str]:
    """The fields of the groups (what a command's kwargs hold for them)."""
    return [o.field for g in groups for o in g]


def pick(kw: dict[str, Any], cls: type, *, pop: bool = True) -> dict[str, Any]:
    """The entries of ``kw`` that are fields of the dataclass ``cls`` (removed from ``kw`` when ``pop``)."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    names = {f.name for f in fields(cls)}
    out = {k: kw[k] for k in list(kw) if k in names}
    if pop:
        for k in out:
            del kw[k]
    return out


def algorithm_overrides(kw: dict[str, Any], *, pop: bool = True) -> dict[str, Any]:
    """The algorithm overrides given (not None), for ``FleetOptions.overrides``."""
    out = {k: kw[k] for k in ALGORITHM_OVERRIDES if kw.get(k) is not None}
    if pop:
        for k in ALGORITHM_OVERRIDES:
            kw.pop(k, None)
    return out


def parse_deadline(value: str | float | None) -> float | None:
    """``--round-deadline``: seconds, or 'auto' (None: the adaptive deadline)."""
    if value is None or value == "auto":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--round-deadline must be seconds or 'auto', got {value!r}") from None
    if seconds <= 0:
        raise UsageError(f"--round-deadline must be positive, got {value!r}")
    return seconds
