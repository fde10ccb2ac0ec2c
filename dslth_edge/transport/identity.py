"""Who sent a payload: per-node Ed25519 identities, the fleet roster, and sealed payloads.

Every payload a node puts on MQTT (mask frames, dense weights, control messages, its
retained hello) travels *sealed*: a 44-byte header binding it to (fleet, fleet epoch,
the sender's incarnation, sender, round, kind), then the payload, then a tag. Three
modes, one per fleet:

``ed25519``
    Each node signs with its own private key (``dslth-edge keys init`` writes them);
    receivers verify against the fleet roster (node id → public key). A member cannot
    speak for another member, and a payload of another run or of an earlier process of
    its sender (another incarnation) is refused.
``hmac``
    HMAC-SHA256 under one fleet-wide key: outsiders cannot forge, but every member can
    impersonate every other member (the light option).
``crc``
    CRC-32C only: catches corruption, authenticates nothing. Insecure demo mode.

Byte layout of a sealed payload (little-endian)::

    0  4  magic "DSLS"           16  8  fleet epoch (u64)
    4  1  version (2)            24  8  incarnation (u64) of the sender's process
    5  1  mode (0 crc, 1 hmac,   32  4  sender node id (= the topic owner)
          2 ed25519)             36  4  round (u32; 0 for hello)
    6  1  kind (0 mask, 1 ctl,   40  4  payload length n
          2 hello)               44  n  payload
    7  1  reserved (0)           end    tag: CRC-32C (4), HMAC-SHA256 (32) or
    8  8  fleet-id hash                 Ed25519 signature (64) of everything before

:meth:`Identity.open` checks length, magic, version, mode, kind, fleet, fleet epoch and
sender (against the topic owner), then the tag, before it returns anything; every
failure is an :class:`AuthError` (a :class:`~dslth_edge.errors.FrameError`).

**Every run is its own epoch.** Each :class:`Identity` draws a fresh random
*incarnation* (64 bits from the OS's CSPRNG, like a key: it must not be predictable or
reproducible) and seals everything with it; a resumed node is a new process with a new
incarnation. Receivers take a sender's payloads only under the incarnation they have
*verified fresh* (:mod:`dslth_edge.transport.mqtt`): the sender's signed hello must
list the receiver's own current incarnation, which did not exist before this run, so
no recording of an earlier run (frames, control messages, hellos) can pass for this
one, whatever the fleet epoch. The fleet epoch (the roster's, or ``--run-epoch``) is
checked too: bumping it retires every earlier run at once. The old behaviour (the fleet
epoch alone, hellos taken without the freshness check, so a recorder can replay an
earlier run with the same epoch) is only behind an explicit option: epoch policy
``fixed`` in the roster, or ``--fixed-epoch``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c

from dslth_edge.errors import FrameError, UsageError
from dslth_edge.transport.messages import check_fleet_name
from dslth_edge.util.secret_files import private_dir, read_private, write_private
from dslth_edge.wire.frame import fleet_hash

__all__ = [
    "MODES",
    "SEAL_MAGIC",
    "SEAL_HEADER_BYTES",
    "SEAL_KINDS",
    "AuthError",
    "Identity",
    "choose_identity",
    "EPOCH_POLICIES",
    "incarnation_hex",
    "launcher_epoch",
    "Opened",
    "Roster",
    "generate_keys",
    "key_file",
    "load_fleet_key",
    "load_private_key",
    "MIN_HMAC_KEY_BYTES",
    "roster_file",
    "seal_overhead",
]

MODES = ("ed25519", "hmac", "crc")
_MODE_IDS = {"crc": 0, "hmac": 1, "ed25519": 2}
_TAG_BYTES = {"crc": 4, "hmac": 32, "ed25519": 64}
SEAL_KINDS = {"mask": 0, "ctl": 1, "hello": 2, "report": 3}  # report: a node's progress for `fleet watch`
SEAL_MAGIC = b"DSLS"
_VERSION = 2  # 2: the sender's incarnation in the header
_HEADER = struct.Struct("<4sBBBB8sQQIII")
SEAL_HEADER_BYTES = _HEADER.size  # 44
_U32 = 1 << 32
_U64 = 1 << 64
ROSTER_FORMAT = "dslth-roster"
#: how a fleet's runs are kept apart; the roster names one. ``per-run``: every node
#: process is a fresh incarnation, verified fresh by its neighbours (the default);
#: ``fixed``: the fleet epoch alone (earlier runs of the same epoch can be replayed)
EPOCH_POLICIES = ("per-run", "fixed")
_LEGACY_POLICIES = {"roster": "per-run"}  # older rosters' default: now one run per epoch too


class AuthError(FrameError):
    """A sealed payload failed a check: mode, fleet, run epoch, sender, kind or its tag."""


def incarnation_hex(node: int, incarnation: int) -> str:
    """How a hello lists a neighbour's incarnation it has heard: ``"<node>:<16 hex digits>"``."""
    return f"{node}:{incarnation:016x}"


def seal_overhead(mode: str) -> int:
    """Bytes a seal adds to a payload in ``mode``."""
    return SEAL_HEADER_BYTES + _TAG_BYTES[mode]


def roster_file(directory: str | Path) -> Path:
    """Where ``keys init`` writes the roster in ``directory``."""
    return Path(directory) / "roster.json"


def key_file(directory: str | Path, node: int) -> Path:
    """Where ``keys init`` writes node ``node``'s private key in ``directory``."""
    return Path(directory) / f"node-{node}.key"


@dataclass(frozen=True)
class Roster:
    """A fleet's members: node id → Ed25519 public key (32 raw bytes), and the run epoch policy.

    Every payload is bound to :attr:`epoch` (bump it with ``keys init --epoch`` to retire
    all earlier runs' frames at once). ``epoch_policy`` ``"per-run"`` (the default) binds
    every run to its own fresh incarnations as well; ``"fixed"`` (explicit only) does not,
    as before: then a recording of an earlier run of the same epoch replays. Rosters of
    older versions say ``"roster"``: read as ``"per-run"``.
    """

    fleet: str
    keys: dict[int, bytes]
    epoch: int = 1
    epoch_policy: str = "per-run"
    _verifiers: dict[int, object] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "epoch_policy", _LEGACY_POLICIES.get(self.epoch_policy, self.epoch_policy))
        if self.epoch_policy not in EPOCH_POLICIES:
            raise UsageError(f"roster epoch policy must be one of {', '.join(EPOCH_POLICIES)}, got {self.epoch_policy!r}")
        if not 0 <= self.epoch < _U64:
            raise UsageError(f"roster epoch {self.epoch} does not fit in 64 bits")

    def public_key(self, node: int) -> object | None:
        """The node's :class:`Ed25519PublicKey` (cached), or None when the roster lacks it."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if node not in self._verifiers:
            raw = self.keys.get(node)
            if raw is None:
                return None
            self._verifiers[node] = Ed25519PublicKey.from_public_bytes(raw)
        return self._verifiers[node]

    def to_json(self) -> str:
        return json.dumps({"format": ROSTER_FORMAT, "version": 1, "fleet": self.fleet, "epoch": self.epoch,
                           "epoch_policy": self.epoch_policy,
                           "nodes": {str(i): self.keys[i].hex() for i in sorted(self.keys)}}, indent=2) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> "Roster":
        """Read a roster file; a malformed one is a :class:`UsageError` naming the file."""
        p = Path(path)
        try:
            raw = json.loads(p.read_text())
        except OSError as exc:
            raise UsageError(f"cannot read roster {p}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise UsageError(f"roster {p} is not JSON: {exc}") from exc
        try:
            if raw.get("format") != ROSTER_FORMAT or raw.get("version") != 1:
                raise ValueError("not a dslth-roster version 1 file")
            keys = {int(k): bytes.fromhex(v) for k, v in raw["nodes"].items()}
            if any(len(v) != 32 or not 0 <= k < _U32 for k, v in keys.items()):
                raise ValueError("a node id is out of range or a public key is not 32 bytes")
            return cls(fleet=str(raw["fleet"]), keys=keys, epoch=int(raw.get("epoch", 1)),
                       epoch_policy=str(raw.get("epoch_policy", "per-run")))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"roster {p} is malformed: {exc}") from exc


def generate_keys(fleet: str, nodes: int, directory: str | Path, *, epoch: int = 1, epoch_policy: str = "per-run",
                  overwrite: bool = False) -> Roster:
    """Write ``node-<i>.key`` (PKCS#8 PEM, mode 0600) for every node and ``roster.json`` (0644).

    Keys come from the operating system's CSPRNG: key generation is the one random
    choice in the toolkit that must not be reproducible from a seed. ``directory`` must
    be this user's and writable by nobody else (created 0700 when missing); every file
    goes through a private temporary file and a rename
    (:func:`dslth_edge.util.secret_files.write_private`), so no planted symlink is followed
    and no key is readable by others at any moment.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if nodes < 1:
        raise UsageError("--nodes must be >= 1")
    check_fleet_name(fleet)
    out = private_dir(directory, what="key directory")
    if (roster_file(out).exists() or roster_file(out).is_symlink()) and not overwrite:
        raise UsageError(f"{roster_file(out)} exists; pass --force to replace the fleet's keys")
    public: dict[int, bytes] = {}
    for i in range(nodes):
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        write_private(key_file(out, i), pem, mode=0o600, overwrite=overwrite)
        public[i] = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    roster = Roster(fleet=fleet, keys=public, epoch=epoch, epoch_policy=epoch_policy)
    write_private(roster_file(out), roster.to_json().encode(), mode=0o644, overwrite=True)
    return roster


#: the shortest fleet HMAC key accepted: HMAC-SHA256's own output size
MIN_HMAC_KEY_BYTES = 32


def load_fleet_key(path: str | Path | None, env_value: str | None) -> bytes | None:
    """The fleet's HMAC key: the first line of ``path`` (mode 0600 or stricter, this
    user's regular file), else ``env_value``; None when neither is given (CRC frames).
    A key shorter than :data:`MIN_HMAC_KEY_BYTES` is a UsageError.
    """
    if path:
        data = read_private(path, what="fleet key file", min_bytes=1)
        key, where = (data.splitlines() or [b""])[0], f"fleet key file {path}"
    elif env_value is not None:
        key, where = env_value.encode(), "the fleet key in the environment"
    else:
        return None
    if len(key) < MIN_HMAC_KEY_BYTES:
        raise UsageError(f"{where} is {len(key)} bytes; an HMAC fleet key needs at least {MIN_HMAC_KEY_BYTES} "
                         f"(e.g. `openssl rand -hex 32`)")
    return key


def load_private_key(path: str | Path) -> object:
    """A node's Ed25519 private key; refuses a key file others can read."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    try:
        mode = p.stat().st_mode
        data = p.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read node key {p}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"node key {p} is readable by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"node key {p} is not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"node key {p} is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class Opened:
    """A sealed payload whose every binding checked out."""

    kind: str
    sender: int
    round: int
    epoch: int
    incarnation: int
    payload: bytes


class Identity:
    """One node's way of sealing what it sends and opening what it receives.

    Build it with :meth:`ed25519`, :meth:`hmac` or :meth:`crc`. Each one is a fresh
    :attr:`incarnation` (drawn at construction); :attr:`fresh` says whether neighbours'
    hellos must prove they are of this run (the default) or the fixed epoch is trusted
    alone. Thread-safe (no mutable state after construction).
    """

    def __init__(self, *, mode: str, fleet: str, node_id: int, epoch: int, roster: Roster | None = None,
                 private_key: object | None = None, hmac_key: bytes | None = None, source: str = "",
                 fresh: bool = True, incarnation: int | None = None) -> None:
        if mode not in MODES:
            raise UsageError(f"identity mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0 <= epoch < _U64:
            raise UsageError(f"run epoch {epoch} does not fit in 64 bits")
        if mode == "ed25519" and roster is None:
            raise UsageError("Ed25519 identity needs the roster (and this node's key to seal)")
        if mode == "hmac" and not hmac_key:
            raise UsageError("HMAC mode needs a non-empty fleet key")
        self.mode = mode
        self.fleet = fleet
        self.node_id = node_id
        self.epoch = epoch
        #: this process's incarnation: random, never 0 (a hello lists it to prove it is of this run)
        self.incarnation = incarnation if incarnation is not None else 1 + secrets.randbelow(_U64 - 1)
        if not 0 < self.incarnation < _U64:
            raise UsageError(f"incarnation {self.incarnation} must be in 1..2**64-1")
        #: whether a neighbour's hello must list our incarnation (per-run) before its payloads count
        self.fresh = fresh
        self.roster = roster
        self._private = private_key
        self._hmac_key = hmac_key
        self._fleet_hash = fleet_hash(fleet)
        self.source = source
        if mode == "ed25519" and private_key is not None:  # without it: open only (Identity.verifier)
            assert roster is not None
            mine = roster.keys.get(node_id)
            if mine is None:
                raise UsageError(f"the roster of fleet {roster.fleet!r} has no node {node_id}")
            from cryptography.hazmat.primitives import serialization

            own = private_key.public_key().public_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            if own != mine:
                raise UsageError(f"this node key is not node {node_id}'s key in the roster of fleet {roster.fleet!r}")
            if roster.fleet != fleet:
                raise UsageError(f"the roster is fleet {roster.fleet!r}'s, this node is in fleet {fleet!r}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def ed25519(cls, *, fleet: str, node_id: int, roster_path: str | Path, key_path: str | Path,
                epoch: int | None = None, fixed_epoch: bool = False) -> "Identity":
        """Sign with the node's key; verify against the roster. ``epoch`` None: the roster's;
        the freshness check is off when the roster's policy is ``fixed`` or ``fixed_epoch``."""
        roster = Roster.load(roster_path)
        return cls(mode="ed25519", fleet=fleet, node_id=node_id, epoch=roster.epoch if epoch is None else epoch,
                   roster=roster, private_key=load_private_key(key_path), source=str(roster_path),
                   fresh=not (fixed_epoch or roster.epoch_policy == "fixed"))

    @classmethod
    def verifier(cls, *, mode: str, fleet: str, epoch: int, roster_path: str | Path | None = None,
                 key: bytes | None = None) -> "Identity":
        """An identity that only opens (an observer such as ``fleet watch``): no node, no private key."""
        roster = Roster.load(roster_path) if roster_path is not None else None
        return cls(mode=mode, fleet=fleet, node_id=0, epoch=epoch, roster=roster, hmac_key=key,
                   source=str(roster_path or ""))

    @classmethod
    def hmac(cls, *, fleet: str, node_id: int, key: bytes, epoch: int = 0, fixed_epoch: bool = False) -> "Identity":
        return cls(mode="hmac", fleet=fleet, node_id=node_id, epoch=epoch, hmac_key=key, fresh=not fixed_epoch)

    @classmethod
    def crc(cls, *, fleet: str, node_id: int, epoch: int = 0, fixed_epoch: bool = False) -> "Identity":
        return cls(mode="crc", fleet=fleet, node_id=node_id, epoch=epoch, fresh=not fixed_epoch)

    # ------------------------------------------------------------------ description
    def describe(self) -> str:
        """The security mode in one phrase, for the node's startup line."""
        runs = (f"run epoch {self.epoch}, a fresh incarnation per run" if self.fresh
                else f"FIXED run epoch {self.epoch} (earlier runs of it can be replayed)")
        if self.mode == "ed25519":
            n = len(self.roster.keys) if self.roster else 0
            return (f"Ed25519 node identities (roster {self.source or '?'}, {n} members), {runs}: "
                    "frames, hello and control messages signed and verified per sender")
        if self.mode == "hmac":
            return (f"fleet HMAC-SHA256, {runs}: outsiders cannot forge, "
                    "but any member can impersonate any other")
        return f"CRC-32C only, {runs}: INSECURE demo mode, anyone who can publish can forge"

    @property
    def overhead(self) -> int:
        return seal_overhead(self.mode)

    # ------------------------------------------------------------------ seal / open
    def seal(self, kind: str, round: int, payload: bytes) -> bytes:  # noqa: A002
        """``payload`` bound to (fleet, epoch, this incarnation, this node, ``round``, ``kind``) and tagged."""
        if not 0 <= round < _U32:
            raise ValueError(f"round must fit in 32 bits, got {round}")
        head = _HEADER.pack(SEAL_MAGIC, _VERSION, _MODE_IDS[self.mode], SEAL_KINDS[kind], 0, self._fleet_hash,
                            self.epoch, self.incarnation, self.node_id, round, len(payload))
        body = head + bytes(payload)
        return body + self._tag(body)

    def _tag(self, body: bytes) -> bytes:
        if self.mode == "ed25519":
            return self._private.sign(body)  # type: ignore[attr-defined,no-any-return]
        if self.mode == "hmac":
            assert self._hmac_key is not None
            return hmac.new(self._hmac_key, body, hashlib.sha256).digest()
        return google_crc32c.value(body).to_bytes(4, "little")

    def open(self, data: bytes | bytearray | memoryview, *, sender: int, kind: str) -> Opened:
        """Check every binding of a sealed payload from topic owner ``sender``; raise AuthError on any failure.

        The sender's incarnation is returned, not checked: whether it is the sender's
        current, verified-fresh one is the receiving transport's knowledge."""
        buf = bytes(data)
        tag_bytes = _TAG_BYTES[self.mode]
        if len(buf) < SEAL_HEADER_BYTES + tag_bytes:
            raise AuthError(f"sealed payload of {len(buf)} bytes is shorter than its header and tag")
        magic, version, mode, kind_id, reserved, fleet_id, epoch, incarnation, who, rnd, n = _HEADER.unpack_from(buf, 0)
        if magic != SEAL_MAGIC:
            raise AuthError(f"not a sealed payload (magic {magic!r})")
        if version != _VERSION or reserved:  # version 1: an older dslth-edge, without incarnations
            raise AuthError(f"sealed payload version {version}/reserved {reserved}, this node reads {_VERSION}/0")
        if mode != _MODE_IDS[self.mode]:
            theirs = {v: k for k, v in _MODE_IDS.items()}.get(mode, str(mode))
            raise AuthError(f"sealed in mode {theirs}, this fleet uses {self.mode}")
        if kind_id != SEAL_KINDS.get(kind):
            raise AuthError(f"sealed payload of kind {kind_id} on a {kind} topic")
        if SEAL_HEADER_BYTES + n + tag_bytes != len(buf):
            raise AuthError("sealed payload length does not match its header")
        if fleet_id != self._fleet_hash:
            raise AuthError("sealed payload belongs to another fleet")
        if who != sender:
            raise AuthError(f"payload on node {sender}'s topic claims sender {who}")
        if epoch != self.epoch:
            raise AuthError(f"payload of run epoch {epoch}, this run is epoch {self.epoch}")
        body, tag = buf[:-tag_bytes], buf[-tag_bytes:]
        self._verify(sender, body, tag)
        return Opened(kind=kind, sender=who, round=rnd, epoch=epoch, incarnation=incarnation,
                      payload=body[SEAL_HEADER_BYTES:])

    def _verify(self, sender: int, body: bytes, tag: bytes) -> None:
        if self.mode == "ed25519":
            from cryptography.exceptions import InvalidSignature

            assert self.roster is not None
            public = self.roster.public_key(sender)
            if public is None:
                raise AuthError(f"node {sender} is not in the roster")
            try:
                public.verify(tag, body)  # type: ignore[attr-defined]
            except InvalidSignature:
                raise AuthError(f"Ed25519 signature of node {sender} does not verify") from None
        elif self.mode == "hmac":
            assert self._hmac_key is not None
            if not hmac.compare_digest(hmac.new(self._hmac_key, body, hashlib.sha256).digest(), tag):
                raise AuthError("HMAC-SHA256 mismatch: wrong fleet key or tampered payload")
        elif google_crc32c.value(body) != int.from_bytes(tag, "little"):
            raise AuthError("CRC-32C mismatch")


def choose_identity(fleet: str, node_id: int, *, roster: str | Path | None = None, node_key: str | Path | None = None,
                    hmac_key: bytes | None = None, epoch: int | None = None, fixed_epoch: bool = False) -> Identity:
    """The node's identity from its options: a roster means Ed25519 (the key defaults to
    ``node-<id>.key`` next to the roster), else a fleet key means HMAC, else CRC (demo).
    ``fixed_epoch``: the old behaviour, no per-run freshness check (also the roster's ``fixed`` policy)."""
    if node_key is not None and roster is None:
        raise UsageError("--node-key needs --roster (the fleet's public keys)")
    if roster is not None:
        if hmac_key is not None:
            raise UsageError("give either --roster (Ed25519 identities) or a fleet HMAC key, not both")
        key = node_key if node_key is not None else key_file(Path(roster).parent, node_id)
        return Identity.ed25519(fleet=fleet, node_id=node_id, roster_path=roster, key_path=key, epoch=epoch,
                                fixed_epoch=fixed_epoch)
    if hmac_key is not None:
        return Identity.hmac(fleet=fleet, node_id=node_id, key=hmac_key, epoch=epoch or 0, fixed_epoch=fixed_epoch)
    return Identity.crc(fleet=fleet, node_id=node_id, epoch=epoch or 0, fixed_epoch=fixed_epoch)


def launcher_epoch(roster: str | Path | None, given: int | None) -> int | None:
    """The run epoch a launcher hands all its nodes: ``given`` (else each node takes the
    roster's). Nothing is drawn here any more: every node process is a fresh incarnation
    that its neighbours verify (:class:`Identity`), which binds a run to itself without a
    launcher, so separate devices and ``--only`` slices need no shared secret epoch."""
    if roster is not None:
        Roster.load(roster)  # a malformed roster is reported by the launcher, once
    return given
