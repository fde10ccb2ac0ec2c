"""Per-node identities: `keys init`, the roster, and what a seal binds (every check can fail)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dslth_edge.errors import UsageError
from dslth_edge.transport.identity import AuthError, Identity, Roster, choose_identity, generate_keys, launcher_epoch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    res = subprocess.run([sys.executable, "-m", "dslth_edge", "keys", "init", "--fleet", "lab", "--nodes", "3",
                          "--out", str(d), "--epoch", "4"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert res.returncode == 0, res.stderr
    return d


def ed(keys: Path, i: int, epoch: int | None = None) -> Identity:
    return Identity.ed25519(fleet="lab", node_id=i, roster_path=keys / "roster.json", key_path=keys / f"node-{i}.key",
                            epoch=epoch)


def test_keys_init_files_and_modes(keys: Path) -> None:
    assert stat.S_IMODE((keys / "roster.json").stat().st_mode) == 0o644
    for i in range(3):
        assert stat.S_IMODE((keys / f"node-{i}.key").stat().st_mode) == 0o600
    roster = Roster.load(keys / "roster.json")
    assert roster.fleet == "lab" and roster.epoch == 4 and sorted(roster.keys) == [0, 1, 2]
    assert len({bytes(k) for k in roster.keys.values()}) == 3
    raw = json.loads((keys / "roster.json").read_text())
    assert raw["epoch_policy"] == "per-run" and set(raw["nodes"]) == {"0", "1", "2"}  # the default
    with pytest.raises(UsageError, match="exists; pass --force"):
        generate_keys("lab", 3, keys)


def test_key_file_readable_by_others_refused(keys: Path, tmp_path: Path) -> None:
    leaky = tmp_path / "node-0.key"
    leaky.write_bytes((keys / "node-0.key").read_bytes())
    leaky.chmod(0o644)
    with pytest.raises(UsageError, match="readable by others"):
        Identity.ed25519(fleet="lab", node_id=0, roster_path=keys / "roster.json", key_path=leaky)
    with pytest.raises(UsageError, match="not node 1's key"):
        Identity.ed25519(fleet="lab", node_id=1, roster_path=keys / "roster.json", key_path=keys / "node-0.key")


def test_seal_binds_everything(keys: Path) -> None:
    a, b = ed(keys, 0), ed(keys, 1)
    sealed = a.seal("mask", 7, b"payload")
    opened = b.open(sealed, sender=0, kind="mask")
    assert (opened.sender, opened.round, opened.epoch, opened.payload) == (0, 7, 4, b"payload")
    assert opened.incarnation == a.incarnation != ed(keys, 0).incarnation  # every Identity: a fresh incarnation
    failures = {
        "claims sender 0": lambda: b.open(sealed, sender=2, kind="mask"),
        "kind": lambda: b.open(sealed, sender=0, kind="ctl"),
        "run epoch 4, this run is epoch 5": lambda: ed(keys, 1, epoch=5).open(sealed, sender=0, kind="mask"),
        "another fleet": lambda: Identity(mode="ed25519", fleet="other", node_id=1, epoch=4,
                                          roster=Roster(fleet="other", keys=b.roster.keys, epoch=4),  # type: ignore[union-attr]
                                          private_key=b._private).open(sealed, sender=0, kind="mask"),
        "does not verify": lambda: b.open(sealed[:-1] + bytes([sealed[-1] ^ 1]), sender=0, kind="mask"),
        "mode hmac": lambda: b.open(Identity.hmac(fleet="lab", node_id=0, key=b"k", epoch=4).seal("mask", 7, b"p" * 64),
                                    sender=0, kind="mask"),
        "length": lambda: b.open(sealed + b"x", sender=0, kind="mask"),
        "shorter": lambda: b.open(sealed[:20], sender=0, kind="mask"),
    }
    for what, attempt in failures.items():
        with pytest.raises(AuthError, match=what):
            attempt()
    # a member signing in another's name: the header says 0, the signature is 2's
    forged = bytearray(ed(keys, 2).seal("mask", 7, b"payload"))
    forged[32:36] = (0).to_bytes(4, "little")
    with pytest.raises(AuthError, match="does not verify"):
        b.open(bytes(forged), sender=0, kind="mask")


def test_hmac_and_crc_modes() -> None:
    h0, h1 = Identity.hmac(fleet="f", node_id=0, key=b"secret"), Identity.hmac(fleet="f", node_id=1, key=b"secret")
    assert h1.open(h0.seal("ctl", 1, b"x"), sender=0, kind="ctl").payload == b"x"
    with pytest.raises(AuthError, match="HMAC"):
        Identity.hmac(fleet="f", node_id=1, key=b"other").open(h0.seal("ctl", 1, b"x"), sender=0, kind="ctl")
    c = Identity.crc(fleet="f", node_id=0)
    sealed = bytearray(c.seal("mask", 1, b"abc"))
    sealed[-6] ^= 1
    with pytest.raises(AuthError, match="CRC"):
        Identity.crc(fleet="f", node_id=1).open(bytes(sealed), sender=0, kind="mask")
    assert "INSECURE" in c.describe() and "impersonate" in h0.describe()


def test_choose_identity_and_epoch_policy(keys: Path, tmp_path: Path) -> None:
    assert choose_identity("lab", 1, roster=keys / "roster.json").mode == "ed25519"  # key next to the roster
    assert choose_identity("lab", 1, hmac_key=b"k").mode == "hmac"
    assert choose_identity("lab", 1).mode == "crc"
    with pytest.raises(UsageError, match="not both"):
        choose_identity("lab", 1, roster=keys / "roster.json", hmac_key=b"k")
    # per-run (the default) needs no shared run epoch: every process is its own incarnation
    assert launcher_epoch(keys / "roster.json", None) is None and launcher_epoch(keys / "roster.json", 9) == 9
    assert choose_identity("lab", 0, roster=keys / "roster.json").fresh
    assert not choose_identity("lab", 0, roster=keys / "roster.json", fixed_epoch=True).fresh
    assert not choose_identity("lab", 0, hmac_key=b"k", fixed_epoch=True).fresh and choose_identity("lab", 0).fresh
    fixed = tmp_path / "fixed"
    generate_keys("lab", 2, fixed, epoch_policy="fixed")
    assert not choose_identity("lab", 0, roster=fixed / "roster.json").fresh
    assert "FIXED" in choose_identity("lab", 0, roster=fixed / "roster.json").describe()
    # a roster of an older version says "roster" (its default then): read as per-run
    legacy = tmp_path / "legacy.json"
    legacy.write_text((keys / "roster.json").read_text().replace('"per-run"', '"roster"'))
    assert Roster.load(legacy).epoch_policy == "per-run"
