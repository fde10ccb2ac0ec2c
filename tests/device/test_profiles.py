"""Hardware profiles: the built-ins, validation on load, and the `profiles` CLI group."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest
from click.testing import CliRunner

from dslth_edge.cli.profiles import profiles
from dslth_edge.errors import ProfileError, UsageError
from dslth_edge.device.profiles import (
    MIB,
    SCHEMA,
    SOURCE_FIELDS,
    Profile,
    builtin_profile_names,
    is_profile_path,
    list_profiles,
    load_profile,
    parse_profile,
)

REPO = Path(__file__).resolve().parents[2]
REQUIRED = {
    "jetson-nano",
    "jetson-orin-nano",
    "raspberry-pi-4",
    "raspberry-pi-5",
    "raspberry-pi-zero-2w",
    "esp32-s3",
    "stm32h743",
    "nrf52840",
    "x86-host",
}
MCUS = {"esp32-s3", "stm32h743", "nrf52840"}
WIDE = {"COLUMNS": "250"}


# --------------------------------------------------------------------------- built-ins


def test_builtin_profiles_present_and_valid():
    names = builtin_profile_names()
    assert REQUIRED <= set(names)
    loaded = list_profiles()
    assert [p.name for p in loaded] == names
    for p in loaded:
        assert isinstance(p, Profile)
        assert p.builtin
        assert Path(p.source_path).name == f"{p.name}.toml"


def test_builtin_profiles_cite_sources_and_are_plausible():
    for p in list_profiles():
        assert p.sources, p.name
        for s in p.sources:
            assert s.url.startswith("https://"), (p.name, s.url)
            assert len(s.supports) > 20, (p.name, s.title)
        # the planner's budgets fit inside the device
        assert p.budget.model_ram_mib <= p.memory.ram_mib
        assert p.budget.model_storage_mib <= p.memory.storage_mib
        # effective, not peak: int8 is never more than ~8x fp32 on these backends
        assert p.compute.effective_int8_gmacs <= 8 * p.compute.effective_fp32_gmacs
        assert p.can_train == (p.name not in MCUS), p.name
    mcus = [load_profile(n) for n in MCUS]
    assert all(p.export.dtype == "int8" and p.export.format == "tflite" for p in mcus)
    assert all(p.compute.effective_int8_gmacs < 1.0 for p in mcus)


def test_to_dict_is_json_and_round_trips():
    for p in list_profiles():
        data = json.loads(json.dumps(p.to_dict()))
        assert data["name"] == p.name and data["source_path"] == p.source_path
        assert {s["title"] for s in data["sources"]} == {s.title for s in p.sources}
        raw = {k: v for k, v in data.items() if k not in ("name", "source_path", "builtin")}
        if raw["accelerator"] is None:
            del raw["accelerator"]
        again = parse_profile(raw, name=p.name, source_path=p.source_path, builtin=True)
        assert again == p


def test_derived_budgets():
    p = load_profile("esp32-s3")
    assert p.traffic_budget_bytes == pytest.approx(1000 * 1000 / 8 * 30)
    assert p.model_ram_budget_bytes == 2 * MIB
    assert p.effective_macs_per_s("int8") == pytest.approx(0.15e9)
    with pytest.raises(ProfileError):
        p.effective_gmacs("fp16")


# --------------------------------------------------------------------------- loading


def test_unknown_name_lists_available():
    with pytest.raises(ProfileError) as info:
        load_profile("jetson-tx9")
    message = str(info.value)
    assert "jetson-tx9" in message
    for name in REQUIRED:
        assert name in message


@pytest.mark.parametrize(
    "arg, is_path",
    [("jetson-nano", False), ("./x", True), ("a/b", True), ("my.toml", True), (Path("x"), True)],
)
def test_name_or_path(arg, is_path):
    assert is_profile_path(arg) is is_path


def test_load_user_profile_by_path(tmp_path, monkeypatch):
    text = (REPO / "firmware_profiles" / "raspberry-pi-4.toml").read_text(encoding="utf-8")
    path = tmp_path / "my-pi.toml"
    path.write_text(text)
    p = load_profile(str(path))
    assert p.name == "my-pi" and not p.builtin and p.source_path == str(path)
    assert load_profile(path) == p  # os.PathLike works too
    monkeypatch.chdir(tmp_path)
    assert load_profile("my-pi.toml").cpu.core == "Cortex-A72"  # relative, no slash


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ProfileError, match="absent.toml"):
        load_profile(path)
    with pytest.raises(ProfileError, match="directory"):
        load_profile(str(tmp_path) + "/")


def test_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("device = \n[cpu\n")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(path) in str(info.value) and "invalid TOML" in str(info.value)
    assert "\n" not in str(info.value)


PI4 = (REPO / "firmware_profiles" / "raspberry-pi-4.toml").read_text(encoding="utf-8")

BAD_EDITS = [
    # (find, replace, key named in the message, words of the expectation)
    ("cores = 4", "cores = 0", "cpu.cores", "positive integer"),
    ("cores = 4", "cores = 4.5", "cpu.cores", "positive integer"),
    ("cores = 4", 'cores = "four"', "cpu.cores", "positive integer"),
    ("cores = 4", "cores = true", "cpu.cores", "positive integer"),
    ("clock_mhz = 1500", "clock_mhz = -1500", "cpu.clock_mhz", "positive number (MHz)"),
    ("clock_mhz = 1500", "clock_mhz = nan", "cpu.clock_mhz", "positive number"),
    ("clock_mhz = 1500", "clock_mhz = 0", "cpu.clock_mhz", "positive number"),
    ("uplink_kbps = 5000.0", "uplink_kbps = true", "network.uplink_kbps", "positive number"),
    ("channel_multiple = 8", "channel_multiple = 0", "compute.channel_multiple", "positive integer"),
    ("can_train = true", 'can_train = "yes"', "can_train", "true or false"),
    ("can_train = true\n", "", "can_train", "missing"),
    ("latency_ms = 30.0\n", "", "budget.latency_ms", "missing"),
    ("latency_ms = 30.0", "latency_ms = 30.0\nlatency_s = 0.03", "budget.latency_s", "unknown"),
    ('device = "Raspberry Pi 4 Model B (4 GB)"', 'device = "x"\ncolour = "red"', "colour", "unknown"),
    ('device = "Raspberry Pi 4 Model B (4 GB)"', 'device = ""', "device", "non-empty string"),
    ("[network]", "[net]", "net", "unknown"),
    ('format = "tflite"', 'format = "pt"', "export.format", "'onnx', 'tflite'"),
    ('dtype = "fp32"', 'dtype = "fp16"', "export.dtype", "'fp32', 'int8'"),
    ("model_ram_mib = 256.0", "model_ram_mib = 8192.0", "budget.model_ram_mib", "at most memory.ram_mib"),
    (
        'url = "https://datasheets.raspberrypi.com/rpi4/raspberry-pi-4-product-brief.pdf"\n',
        "",
        "sources[0].url",
        "missing",
    ),
]


@pytest.mark.parametrize("find, replace, key, expected", BAD_EDITS)
def test_validation_names_file_key_and_expectation(tmp_path, find, replace, key, expected):
    assert find in PI4
    path = tmp_path / "bad.toml"
    path.write_text(PI4.replace(find, replace, 1))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{key}'" in message
    assert expected in message
    assert "expected" in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_sources_required_and_tables_must_be_tables():
    data = tomllib.loads(PI4)
    no_sources = {k: v for k, v in data.items() if k != "sources"}
    with pytest.raises(ProfileError, match="missing key 'sources'"):
        parse_profile(no_sources, name="x", source_path="x.toml")
    with pytest.raises(ProfileError, match="'sources': expected a non-empty array"):
        parse_profile(dict(data, sources=[]), name="x", source_path="x.toml")
    with pytest.raises(ProfileError, match="'cpu': expected a table, got 5"):
        parse_profile(dict(data, cpu=5), name="x", source_path="x.toml")
    with pytest.raises(ProfileError, match="missing key 'network'"):
        parse_profile({k: v for k, v in data.items() if k != "network"}, name="x", source_path="x.toml")
    # the accelerator table is optional, but complete when present
    with pytest.raises(ProfileError, match="missing key 'accelerator.peak_gops'"):
        parse_profile(
            dict(data, accelerator={"kind": "npu", "name": "x", "peak_dtype": "int8"}),
            name="x",
            source_path="x.toml",
        )


def test_profile_is_frozen():
    p = load_profile("jetson-nano")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "other"  # type: ignore[misc]
    assert math.isclose(p.compute.effective_fp32_gmacs, 40.0)


def test_docs_describe_every_key():
    doc = (REPO / "docs" / "profiles.md").read_text(encoding="utf-8")
    for table, fields in SCHEMA.items():
        for spec in fields:
            assert f"`{spec.key}`" in doc, (table, spec.key)
            if spec.unit and spec.kind in ("number", "int"):
                assert spec.unit in doc
    for spec in SOURCE_FIELDS:
        assert f"`{spec.key}`" in doc


# --------------------------------------------------------------------------- CLI


def test_cli_list_table_and_json():
    runner = CliRunner()
    result = runner.invoke(profiles, ["list"], env=WIDE)
    assert result.exit_code == 0, result.output
    for name in REQUIRED:
        assert name in result.output
    assert "Cortex-A57" in result.output and "onnx/fp32" in result.output

    result = runner.invoke(profiles, ["list", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert {d["name"] for d in data} >= REQUIRED
    assert all("sources" in d and "compute" in d for d in data)


def test_cli_show_text_and_json():
    runner = CliRunner()
    result = runner.invoke(profiles, ["show", "stm32h743"], env=WIDE)
    assert result.exit_code == 0, result.output
    for word in ("effective_int8_gmacs", "GMAC/s", "MLPerf Tiny", "tiny_results_v1.1", "can_train"):
        assert word in result.output

    result = runner.invoke(profiles, ["show", "stm32h743", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == dict(load_profile("stm32h743").to_dict(), latency_basis="cited")


def test_cli_show_unknown_raises_profile_error():
    result = CliRunner().invoke(profiles, ["show", "no-such-board"])
    assert isinstance(result.exception, ProfileError)
    assert isinstance(result.exception, UsageError)
    assert "raspberry-pi-zero-2w" in str(result.exception)


def test_cli_show_user_file(tmp_path):
    path = tmp_path / "lab-board.toml"
    path.write_text(PI4)
    result = CliRunner().invoke(profiles, ["show", str(path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["name"] == "lab-board"
