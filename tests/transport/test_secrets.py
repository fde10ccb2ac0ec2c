"""Secrets stay secret: `keys init` writes only into a private directory, through private
temporary files (no planted symlink followed), the fleet HMAC key must be a private file
of at least 32 bytes, URL credentials never reach a file, fleet names are checked first."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dslth_edge.cli.keys import keys
from dslth_edge.errors import UsageError
from dslth_edge.transport.identity import MIN_HMAC_KEY_BYTES, generate_keys, load_fleet_key
from dslth_edge.transport.messages import check_fleet_name
from dslth_edge.transport.mqtt_options import MqttOptions, redact_url

ROOT = Path(__file__).resolve().parents[2]


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_keys_init_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UsageError, match="writable by others"):
        generate_keys("lab", 2, shared)
    assert list(shared.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")
def test_keys_init_refuses_a_directory_it_does_not_own(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UsageError, match="not to this user"):
        generate_keys("lab", 2, theirs)


def test_keys_init_creates_a_private_directory_and_files(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "lab"
    generate_keys("lab", 3, out)
    assert _mode(out) == 0o700
    assert {_mode(out / f"node-{i}.key") for i in range(3)} == {0o600}
    assert _mode(out / "roster.json") == 0o644
    assert not list(out.glob(".*.tmp"))


def test_keys_init_follows_no_planted_symlink(tmp_path: Path) -> None:
    """A planted roster.tmp (the old temp name) and, under --force, node-0.key as symlinks to
    a victim file: the victim is untouched, the keys are regular files of their own."""
    out = tmp_path / "k"
    out.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    (out / "roster.tmp").symlink_to(victim)
    generate_keys("lab", 2, out)
    assert victim.read_text() == "precious\n" and _mode(victim) == 0o600
    assert not (out / "roster.json").is_symlink()
    (out / "node-0.key").unlink()
    (out / "node-0.key").symlink_to(victim)
    generate_keys("lab", 2, out, overwrite=True)
    assert victim.read_text() == "precious\n" and _mode(victim) == 0o600
    key = out / "node-0.key"
    assert not key.is_symlink() and key.is_file() and _mode(key) == 0o600


def test_keys_init_without_force_keeps_existing_keys(tmp_path: Path) -> None:
    out = tmp_path / "k"
    generate_keys("lab", 1, out)
    before = (out / "node-0.key").read_bytes()
    res = CliRunner().invoke(keys, ["init", "--fleet", "lab", "--nodes", "1", "--out", str(out)])
    assert res.exit_code != 0 and "exists" in str(res.exception)
    assert (out / "node-0.key").read_bytes() == before


def test_fleet_key_file_must_be_private_and_long_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "fleet.key"
    key.write_bytes(b"k\n")
    key.chmod(0o600)
    with pytest.raises(UsageError, match="at least 32"):
        load_fleet_key(key, None)
    key.write_bytes(b"a" * 64 + b"\n")
    key.chmod(0o644)
    with pytest.raises(UsageError, match="accessible by others"):
        load_fleet_key(key, None)
    key.chmod(0o600)
    assert load_fleet_key(key, None) == b"a" * 64
    link = tmp_path / "link.key"
    link.symlink_to(key)
    with pytest.raises(UsageError, match="cannot read"):
        load_fleet_key(link, None)
    with pytest.raises(UsageError, match="at least 32"):
        load_fleet_key(None, "short")
    assert load_fleet_key(None, "x" * MIN_HMAC_KEY_BYTES) == b"x" * MIN_HMAC_KEY_BYTES
    assert load_fleet_key(None, None) is None


def test_url_credentials_are_stripped_before_any_file() -> None:
    url = "mqtt://alice:S3cretPW@10.0.0.2:1883"
    assert redact_url(url) == "mqtt://10.0.0.2:1883"
    assert redact_url("mqtts://broker:8883") == "mqtts://broker:8883"
    opts = MqttOptions(url=url).split_credentials()
    assert opts.url == "mqtt://10.0.0.2:1883" and opts.credentials() == ("alice", "S3cretPW")
    assert MqttOptions(url="mqtt://10.0.0.2", password="p").split_credentials().url == "mqtt://10.0.0.2"


@pytest.mark.parametrize("name", ["x/../../../escaped", "../up", "a+b", "a#", "", ".hidden", "a b", "x" * 65, "é"])
def test_unsafe_fleet_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="fleet name"):
        check_fleet_name(name)


def test_train_refuses_an_unsafe_fleet_name_before_any_path(tmp_path: Path) -> None:
    """`train --fleet 'x/../../../escaped'` writes nothing anywhere: exit 2, one line."""
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "dslth_edge", "train", "--fleet", "x/../../../escaped", "--id", "0",
                        "--nodes", "2", "--dataset", "synthetic", "--model", "mcu-cnn", "--rounds", "1",
                        "--profile", "x86-host", "--broker", "mqtt://127.0.0.1:9"],
                       cwd=work, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and "fleet name" in p.stderr, p.stderr
    assert [str(q.relative_to(tmp_path)) for q in tmp_path.rglob("*")] == ["a", "a/b", "a/b/c"]
