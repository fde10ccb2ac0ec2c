"""Hardware profiles: one validated TOML file per device.

A profile describes what a device can do (CPU, optional accelerator, memory, effective
compute measured by published benchmarks) and what a deployment on it may spend
(latency, model RAM and storage, uplink traffic per round). The planner
(:mod:`dslth_edge.device.planner`) turns a profile and a model's per-layer costs into keep
ratios. The schema, with every key's type and unit, is :data:`SCHEMA` and
docs/profiles.md.

Built-in profiles live in ``firmware_profiles/*.toml`` (installed as the package data
``dslth_edge.firmware_profiles``); a user's own profile is any path to a TOML file.
Every problem with a profile raises :class:`~dslth_edge.errors.ProfileError` with a
one-line message naming the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from dslth_edge.cost.calibration import LatencyCalibration, load_calibration
from dslth_edge.cost.units import BYTES_PER_VALUE, MIB  # re-exported: the profile's units
from dslth_edge.errors import ProfileError

__all__ = [
    "DTYPES",
    "EXPORT_FORMATS",
    "ACCELERATOR_KINDS",
    "BYTES_PER_VALUE",
    "MIB",
    "FieldSpec",
    "SCHEMA",
    "SOURCE_FIELDS",
    "OPTIONAL_TABLES",
    "DEFAULT_TRAINING_RAM_SHARE",
    "Cpu",
    "Accelerator",
    "Memory",
    "Compute",
    "Budget",
    "Network",
    "Export",
    "Training",
    "Source",
    "Profile",
    "builtin_profile_names",
    "is_profile_path",
    "load_profile",
    "list_profiles",
    "parse_profile",
]

BUILTIN_PACKAGE = "dslth_edge.firmware_profiles"

DTYPES: tuple[str, ...] = ("fp32", "int8")
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "tflite")
ACCELERATOR_KINDS: tuple[str, ...] = ("gpu", "npu", "dsp", "tpu", "fpga")
ACCELERATOR_DTYPES: tuple[str, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class FieldSpec:
    """One key of the profile schema."""

    key: str
    kind: str  # "str" | "int" | "number" | "bool" | "choice"
    unit: str  # "" when the value has no unit
    doc: str
    choices: tuple[str, ...] = ()

    def expectation(self) -> str:
        """What a valid value looks like, for error messages."""
        if self.kind == "str":
            return "a non-empty string"
        if self.kind == "int":
            return "a positive integer" + (f" ({self.unit})" if self.unit else "")
        if self.kind == "number":
            return "a positive number" + (f" ({self.unit})" if self.unit else "")
        if self.kind == "bool":
            return "true or false"
        return "one of " + ", ".join(repr(c) for c in self.choices)


def _f(key: str, kind: str, unit: str, doc: str, choices: tuple[str, ...] = ()) -> FieldSpec:
    return FieldSpec(key, kind, unit, doc, choices)


#: The schema: table name ("" for top-level keys) -> its fields, in file order.
SCHEMA: dict[str, tuple[FieldSpec, ...]] = {
    "": (
        _f("device", "str", "", "human-readable board / module name"),
        _f(
            "can_train",
            "bool",
            "",
            "whether the device trains its own mask; false for MCUs, which are "
            "inference targets whose mask is trained on a gateway",
        ),
    ),
    "cpu": (
        _f("arch", "str", "", "instruction set, e.g. aarch64, x86_64, xtensa-lx7, armv7e-m"),
        _f("core", "str", "", "core micro-architecture, e.g. Cortex-A72"),
        _f("cores", "int", "cores", "number of CPU cores"),
        _f("clock_mhz", "number", "MHz", "maximum sustained CPU clock"),
    ),
    "accelerator": (
        _f("kind", "choice", "", "accelerator type", ACCELERATOR_KINDS),
        _f("name", "str", "", "accelerator name"),
        _f(
            "peak_gops",
            "number",
            "GOP/s",
            "vendor peak throughput in peak_dtype (informational; the planner uses [compute])",
        ),
        _f("peak_dtype", "choice", "", "dtype of peak_gops", ACCELERATOR_DTYPES),
    ),
    "memory": (
        _f("ram_mib", "number", "MiB", "total RAM (including PSRAM on MCUs)"),
        _f("storage_mib", "number", "MiB", "total flash / storage"),
        _f("storage_kind", "str", "", "what the storage is, e.g. microSD, internal flash"),
    ),
    "compute": (
        _f("backend", "str", "", "inference runtime the effective figures were measured with"),
        _f(
            "effective_fp32_gmacs",
            "number",
            "GMAC/s",
            "sustained fp32 multiply-accumulates per second at batch 1, from published benchmarks",
        ),
        _f(
            "effective_int8_gmacs",
            "number",
            "GMAC/s",
            "sustained int8 multiply-accumulates per second at batch 1, from published benchmarks",
        ),
        _f(
            "per_op_overhead_us",
            "number",
            "µs",
            "fixed cost per weight layer (dispatch, activation, pooling, kernel launch)",
        ),
        _f(
            "channel_multiple",
            "int",
            "channels",
            "channel counts that are a multiple of this hit the fast kernels",
        ),
    ),
    "budget": (
        _f("latency_ms", "number", "ms", "inference latency budget for one sample"),
        _f(
            "model_ram_mib",
            "number",
            "MiB",
            "RAM the model may use: all weights plus the peak activations",
        ),
        _f("model_storage_mib", "number", "MiB", "storage the exported weights may use"),
    ),
    "network": (
        _f("link", "str", "", "the uplink, e.g. Wi-Fi 802.11n, BLE 5, gigabit Ethernet"),
        _f(
            "uplink_kbps",
            "number",
            "kbit/s",
            "uplink bandwidth the mask traffic may use (1 kbit = 1000 bits)",
        ),
        _f("round_period_s", "number", "s", "duration of one learning round"),
    ),
    "export": (
        _f("format", "choice", "", "preferred export format", EXPORT_FORMATS),
        _f("dtype", "choice", "", "preferred export dtype", DTYPES),
    ),
    "training": (
        _f(
            "ram_mib",
            "number",
            "MiB",
            "peak resident memory (RSS) the training process may reach: runtime, model, "
            "optimizer, activations and data",
        ),
        _f("ram_rule", "str", "", "where ram_mib comes from: a source or a stated rule"),
    ),
}

#: Fields of each ``[[sources]]`` entry.
SOURCE_FIELDS: tuple[FieldSpec, ...] = (
    _f("title", "str", "", "datasheet, benchmark or article title"),
    _f("url", "str", "", "where to read it"),
    _f("supports", "str", "", "which numbers of the profile it supports, and how"),
)

#: Tables that may be left out.
OPTIONAL_TABLES: frozenset[str] = frozenset({"accelerator", "training"})
#: Training RAM budget of a trainable profile without a [training] table: this share of memory.ram_mib.
DEFAULT_TRAINING_RAM_SHARE = 0.5


@dataclass(frozen=True)
class Cpu:
    arch: str
    core: str
    cores: int
    clock_mhz: float


@dataclass(frozen=True)
class Accelerator:
    kind: str
    name: str
    peak_gops: float
    peak_dtype: str


@dataclass(frozen=True)
class Memory:
    ram_mib: float
    storage_mib: float
    storage_kind: str


@dataclass(frozen=True)
class Compute:
    backend: str
    effective_fp32_gmacs: float
    effective_int8_gmacs: float
    per_op_overhead_us: float
    channel_multiple: int


@dataclass(frozen=True)
class Budget:
    latency_ms: float
    model_ram_mib: float
    model_storage_mib: float


@dataclass(frozen=True)
class Network:
    link: str
    uplink_kbps: float
    round_period_s: float


@dataclass(frozen=True)
class Export:
    format: str
    dtype: str


@dataclass(frozen=True)
class Training:
    ram_mib: float
    ram_rule: str


@dataclass(frozen=True)
class Source:
    title: str
    url: str
    supports: str


_TABLE_TYPES: dict[str, type] = {
    "cpu": Cpu,
    "accelerator": Accelerator,
    "memory": Memory,
    "compute": Compute,
    "budget": Budget,
    "network": Network,
    "export": Export,
    "training": Training,
}


@dataclass(frozen=True)
class Profile:
    """A validated hardware profile. Units are in the field names (see :data:`SCHEMA`)."""

    name: str  # the file's stem: "jetson-nano"
    source_path: str  # the TOML file it was loaded from
    builtin: bool  # shipped with the package
    device: str
    can_train: bool
    cpu: Cpu
    accelerator: Accelerator | None
    memory: Memory
    compute: Compute
    budget: Budget
    network: Network
    export: Export
    sources: tuple[Source, ...]
    training: Training | None = None  # [training]: optional; trainable built-ins all have one
    # ``calibration = "FILE"``: what `profile --calibrate` measured on the device; None: the
    # latency figures are the cited [compute] ones (see :attr:`latency_basis`)
    calibration: LatencyCalibration | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready data (tables as dicts, sources as a list, the
        calibration as its file's path)."""
        cal = self.calibration
        data = dataclasses.asdict(dataclasses.replace(self, calibration=None))
        data["sources"] = [dict(s) for s in data["sources"]]
        data["calibration"] = None if cal is None else cal.source_path
        return data

    @property
    def latency_basis(self) -> str:
        """"measured" when a calibration file backs the latency figures, else "cited"."""
        return "cited" if self.calibration is None else "measured"

    def effective_gmacs(self, dtype: str) -> float:
        """Effective GMAC/s for ``dtype`` ("fp32" or "int8")."""
        if dtype == "fp32":
            return self.compute.effective_fp32_gmacs
        if dtype == "int8":
            return self.compute.effective_int8_gmacs
        raise ProfileError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")

    def effective_macs_per_s(self, dtype: str) -> float:
        return self.effective_gmacs(dtype) * 1e9

    @property
    def latency_budget_ms(self) -> float:
        return self.budget.latency_ms

    @property
    def model_ram_budget_bytes(self) -> float:
        return self.budget.model_ram_mib * MIB

    @property
    def model_storage_budget_bytes(self) -> float:
        return self.budget.model_storage_mib * MIB

    @property
    def training_ram_budget_bytes(self) -> float:
        """Peak RSS the training process may reach ([training] ram_mib, else the default share of RAM)."""
        if self.training is not None:
            return self.training.ram_mib * MIB
        return DEFAULT_TRAINING_RAM_SHARE * self.memory.ram_mib * MIB

    @property
    def training_ram_rule(self) -> str:
        """Where :attr:`training_ram_budget_bytes` comes from."""
        if self.training is not None:
            return self.training.ram_rule
        return f"no [training] table: {DEFAULT_TRAINING_RAM_SHARE:.0%} of memory.ram_mib (default rule)"

    @property
    def traffic_budget_bytes(self) -> float:
        """Bytes the node may publish per round: uplink bandwidth × round period."""
        return self.network.uplink_kbps * 1000.0 / 8.0 * self.network.round_period_s


# --------------------------------------------------------------------------- validation


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return repr(text)
    return repr(value)


def _fail(where: str, key: str, spec_or_text: FieldSpec | str, value: Any) -> ProfileError:
    expected = spec_or_text if isinstance(spec_or_text, str) else spec_or_text.expectation()
    return ProfileError(f"{where}: key '{key}': expected {expected}, got {_show(value)}")


def _value(where: str, key: str, spec: FieldSpec, value: Any) -> Any:
    if spec.kind == "str":
        if isinstance(value, str) and value.strip():
            return value
    elif spec.kind == "bool":
        if isinstance(value, bool):
            return value
    elif spec.kind == "int":
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    elif spec.kind == "number":
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        ):
            return float(value)
    elif spec.kind == "choice":
        if isinstance(value, str) and value in spec.choices:
            return value
    else:  # pragma: no cover - schema bug
        raise AssertionError(spec.kind)
    raise _fail(where, key, spec, value)


def _table(where: str, prefix: str, data: Any, fields: tuple[FieldSpec, ...]) -> dict[str, Any]:
    """Validate one table: unknown keys, then missing keys, then each value."""
    if not isinstance(data, dict):
        raise _fail(where, prefix, "a table", data)
    known = [f.key for f in fields]
    for key in data:
        if key not in known:
            raise ProfileError(
                f"{where}: unknown key '{prefix}.{key}' (expected one of: {', '.join(known)})"
            )
    out: dict[str, Any] = {}
    for spec in fields:
        dotted = f"{prefix}.{spec.key}"
        if spec.key not in data:
            raise ProfileError(f"{where}: missing key '{dotted}' (expected {spec.expectation()})")
        out[spec.key] = _value(where, dotted, spec, data[spec.key])
    return out


def parse_profile(
    data: Mapping[str, Any], *, name: str, source_path: str = "<memory>", builtin: bool = False
) -> Profile:
    """Validate parsed TOML ``data`` and build a :class:`Profile`.

    Raises ProfileError naming ``source_path``, the offending key and what was expected.
    """
    where = source_path
    top_fields = {f.key: f for f in SCHEMA[""]}
    allowed = list(top_fields) + [t for t in SCHEMA if t] + ["sources", "calibration"]
    for key in data:
        if key not in allowed:
            raise ProfileError(f"{where}: unknown key '{key}' (expected one of: {', '.join(allowed)})")
    for key in allowed:
        if key not in data and key not in OPTIONAL_TABLES and key != "calibration":
            if key in top_fields:
                what = top_fields[key].expectation()
            elif key == "sources":
                what = "an array of tables [[sources]] with title, url, supports"
            else:
                what = f"a table [{key}]"
            raise ProfileError(f"{where}: missing key '{key}' (expected {what})")

    values: dict[str, Any] = {}
    for key, spec in top_fields.items():
        values[key] = _value(where, key, spec, data[key])
    for table, fields in SCHEMA.items():
        if not table:
            continue
        if table not in data or (table in OPTIONAL_TABLES and data[table] is None):  # to_dict() writes None
            values[table] = None
            continue
        values[table] = _TABLE_TYPES[table](**_table(where, table, data[table], fields))

    raw_sources = data["sources"]
    if not isinstance(raw_sources, list) or not raw_sources:
        raise _fail(
            where, "sources", "a non-empty array of tables [[sources]] (title, url, supports)", raw_sources
        )
    sources = tuple(
        Source(**_table(where, f"sources[{i}]", entry, SOURCE_FIELDS))
        for i, entry in enumerate(raw_sources)
    )

    memory: Memory = values["memory"]
    budget: Budget = values["budget"]
    if budget.model_ram_mib > memory.ram_mib:
        raise _fail(
            where,
            "budget.model_ram_mib",
            f"at most memory.ram_mib ({memory.ram_mib:g} MiB)",
            budget.model_ram_mib,
        )
    if budget.model_storage_mib > memory.storage_mib:
        raise _fail(
            where,
            "budget.model_storage_mib",
            f"at most memory.storage_mib ({memory.storage_mib:g} MiB)",
            budget.model_storage_mib,
        )

    training: Training | None = values["training"]
    if training is not None and training.ram_mib > memory.ram_mib:
        raise _fail(
            where,
            "training.ram_mib",
            f"at most memory.ram_mib ({memory.ram_mib:g} MiB)",
            training.ram_mib,
        )

    calibration = _calibration(where, data.get("calibration"), source_path)

    return Profile(
        name=name,
        source_path=source_path,
        builtin=builtin,
        device=values["device"],
        can_train=values["can_train"],
        cpu=values["cpu"],
        accelerator=values["accelerator"],
        memory=memory,
        compute=values["compute"],
        budget=budget,
        network=values["network"],
        export=values["export"],
        sources=sources,
        training=training,
        calibration=calibration,
    )


def _calibration(where: str, value: Any, source_path: str) -> LatencyCalibration | None:
    """The calibration file a profile names (a path relative to the profile's folder), parsed."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _fail(where, "calibration", "a path to a calibration file (from `dslth-edge profile --calibrate`)", value)
    path = Path(value).expanduser()
    if not path.is_absolute() and source_path != "<memory>":
        path = Path(source_path).parent / path
    try:
        return load_calibration(path)
    except ProfileError as exc:
        raise ProfileError(f"{where}: calibration: {exc}") from None


def _parse_bytes(raw: bytes, *, name: str, source_path: str, builtin: bool) -> Profile:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{source_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = " ".join(str(exc).split())
        raise ProfileError(f"{source_path}: invalid TOML: {message}") from None
    return parse_profile(data, name=name, source_path=source_path, builtin=builtin)


# --------------------------------------------------------------------------- loading


def _builtin_dir() -> Any:
    return resources.files(BUILTIN_PACKAGE)


def builtin_profile_names() -> list[str]:
    """Names of the built-in profiles, sorted."""
    names = [
        entry.name[: -len(".toml")]
        for entry in _builtin_dir().iterdir()
        if entry.name.endswith(".toml") and entry.is_file()
    ]
    return sorted(names)


def is_profile_path(name_or_path: str | os.PathLike[str]) -> bool:
    """True when the argument names a file rather than a built-in profile."""
    if not isinstance(name_or_path, str):
        return True
    return "/" in name_or_path or os.sep in name_or_path or name_or_path.endswith(".toml")


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """Load a built-in profile by name, or a user's TOML file by path.

    Anything containing a "/" (or the OS separator) or ending in ".toml" is a path;
    anything else is a built-in name. An unknown name raises ProfileError listing the
    available profiles.
    """
    if is_profile_path(name_or_path):
        path = Path(os.fspath(name_or_path)).expanduser()
        if not path.is_file():
            what = "is a directory, not a profile file" if path.is_dir() else "no such profile file"
            raise ProfileError(f"{path}: {what}")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ProfileError(f"{path}: cannot read: {exc.strerror}") from None
        return _parse_bytes(raw, name=path.stem, source_path=str(path), builtin=False)

    name = str(name_or_path)
    entry = _builtin_dir().joinpath(f"{name}.toml")
    if not name or not entry.is_file():
        available = ", ".join(builtin_profile_names()) or "(none)"
        raise ProfileError(
            f"unknown profile {name!r}; available profiles: {available} "
            "(or give a path to your own .toml file)"
        )
    return _parse_bytes(entry.read_bytes(), name=name, source_path=str(entry), builtin=True)


def list_profiles() -> list[Profile]:
    """All built-in profiles, sorted by name."""
    return [load_profile(name) for name in builtin_profile_names()]
