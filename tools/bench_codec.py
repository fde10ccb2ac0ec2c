#!/usr/bin/env python3
"""Benchmark the mask codecs: size against entropy bounds, and encode/decode time.

Sources of masks:

* ``--masks FILE.npz``: a recorded mask history, arrays named ``r{round:04d}_l{layer:02d}``
  (bool or 0/1, each of its layer's shape, dim 0 = output channels). Every round is
  measured as a key frame and every round after the first as a delta on the previous.
* ``--train``: a real mce-pl run in this process (``tools/codec_train.py``: 4 nodes on a
  ring, Fashion-MNIST, ``classes:3`` partition, ``--model``/``--granularity``/``--keep``,
  ``--rounds``), recording node 0's published masks after every ``begin_round``;
  ``--save-masks FILE.npz`` keeps them (plus ``FILE.json`` with the run's details) for
  ``--masks``. ``--masks`` may be given several times (e.g. one history per keep).
* otherwise (the default, for speed) a built-in synthetic generator that mimics training: per-layer scores
  with a per-channel offset (so keep probability varies by channel, and some channels
  die out), top-k masks at the keep ratio, and score drift between rounds whose size
  decays geometrically (so flip rates start high and decay).

For each case (key frames at keep 0.1/0.3/0.5, early and late deltas) it prints, per
codec forced on every layer and for the encoder's own per-layer choice ("auto"):
payload bits/param, the order-0 entropy bound of the same symbols, the per-channel
bound, and encode/decode milliseconds at 1M and 10M parameters. It checks the targets:
auto <= 1.02x the order-0 bound on every key frame and every delta whose bound is
>= 0.01 bits/param, and encode+decode of a 1M-parameter frame <= 30 ms.

    python tools/bench_codec.py                    # synthetic, 1M and 10M
    python tools/bench_codec.py --masks run.npz    # recorded history (+ synthetic timing)
    python tools/bench_codec.py --json             # machine-readable
    python tools/bench_codec.py --train --keep 0.3 --rounds 200 --save-masks k03.npz
    python tools/bench_codec.py --masks k01.npz --masks k03.npz --masks k05.npz

For recorded or trained histories it also replays the real sending policy over the
whole history (``MaskEncoderState(key_interval=KEY_INTERVAL, optimistic=True)``, as
``dslth_edge.fleet.exchange.Exchange`` does: a key frame every 100 rounds, deltas on the
previous round otherwise) and reports the mean bits/param per round; the target is
<= 0.25 bits/param at keep 0.3 (raw bitmap: 1, dense fp32 weights: 32).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dslth_edge.wire import KEY_INTERVAL, MaskEncoderState, decode_frame, encode_frame_stats  # noqa: E402
from dslth_edge.wire.ans import entropy_bits  # noqa: E402
from dslth_edge.wire.codecs import CODECS  # noqa: E402
from dslth_edge.wire.layer import LayerBits  # noqa: E402

FP = hashlib.sha256(b"bench weights").digest()
FLEET = "bench"
RATIO_TARGET = 1.02
BOUND_FLOOR = 0.01  # bits/param: deltas below this are exempt from the ratio target
TIME_TARGET_MS = 30.0
POLICY_TARGET_BPP = 0.25  # mean whole-frame bits/param over a run at keep 0.3, real policy

# CNN-like layer stacks (dim 0 = output channels) of about 1M and 10M parameters.
SHAPES_1M = [(32, 3, 3, 3), (64, 32, 3, 3), (128, 64, 3, 3), (256, 128, 3, 3), (256, 256, 3, 3), (10, 2304)]
SHAPES_10M = [(64, 3, 3, 3), (128, 64, 3, 3), (256, 128, 3, 3), (512, 256, 3, 3), (512, 512, 3, 3),
              (1024, 512, 3, 3), (1000, 1372)]  # fmt: skip

Masks = list[np.ndarray]


# --- mask sources --------------------------------------------------------------------


def _topk(scores: np.ndarray, keep: float) -> np.ndarray:
    k = int(round(keep * scores.size))
    mask = np.zeros(scores.size, dtype=bool)
    if k:
        mask[np.argpartition(scores.reshape(-1), scores.size - k)[scores.size - k :]] = True
    return mask.reshape(scores.shape)


def synthetic_history(
    shapes: Sequence[tuple[int, ...]], keep: float, rounds: int, seed: int = 0, sigma0: float = 0.25, decay: float = 0.75
) -> list[Masks]:
    """Masks over ``rounds`` rounds of a simulated training run (see module docstring)."""
    rng = np.random.default_rng(seed)
    scores = []
    for shape in shapes:
        c = shape[0]
        offset = rng.normal(0.0, 0.8, size=c)
        offset[rng.random(c) < 0.1] -= 6.0  # ~10% of channels are pruned away entirely
        scores.append(rng.normal(size=shape).astype(np.float32) + offset.reshape((c,) + (1,) * (len(shape) - 1)).astype(np.float32))
    history = []
    for r in range(rounds):
        if r:
            sigma = sigma0 * decay ** (r - 1)
            for s in scores:
                s += rng.normal(0.0, sigma, size=s.shape).astype(np.float32)
        history.append([_topk(s, keep) for s in scores])
    return history


def load_npz(path: Path) -> list[Masks]:
    """A mask history from ``r{round:04d}_l{layer:02d}`` arrays, rounds in order."""
    pattern = re.compile(r"^r(\d+)_l(\d+)$")
    by_round: dict[int, dict[int, np.ndarray]] = {}
    with np.load(path) as data:
        for name in data.files:
            m = pattern.match(name)
            if not m:
                raise SystemExit(f"{path}: unexpected array name {name!r} (want r0000_l00)")
            by_round.setdefault(int(m.group(1)), {})[int(m.group(2))] = np.asarray(data[name]).astype(bool)
    if not by_round:
        raise SystemExit(f"{path}: no masks")
    history = []
    for r in sorted(by_round):
        layers = by_round[r]
        if sorted(layers) != list(range(len(layers))):
            raise SystemExit(f"{path}: round {r} has layers {sorted(layers)}")
        history.append([layers[i] for i in range(len(layers))])
    return history


# --- measurement ---------------------------------------------------------------------


def _best_ms(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def bounds(symbols: Masks) -> tuple[float, float]:
    """(order-0 bound, per-channel bound) in bits for these symbol layers."""
    order0 = sum(entropy_bits(int(m.sum()), m.size) for m in symbols)
    channel = 0.0
    for m in symbols:
        rows = m.reshape(m.shape[0], -1)
        channel += entropy_bits(rows.sum(axis=1), np.full(rows.shape[0], rows.shape[1]))
    return order0, channel


def measure(masks: Masks, base: Masks | None, *, timing: bool, repeat: int, codecs: bool = True) -> dict:
    """Sizes (and times) of every codec forced on all layers, and of the auto choice."""
    symbols = [m ^ b for m, b in zip(masks, base)] if base is not None else masks
    n = sum(m.size for m in masks)
    order0, channel = bounds(symbols)
    out: dict = {
        "params": n,
        "order0_bound_bpp": order0 / n,
        "channel_bound_bpp": channel / n,
        "codecs": {},
    }
    layers = [LayerBits(m) for m in symbols]
    if codecs:
        for codec in CODECS:
            payloads = [codec.encode(lb) for lb in layers]
            row = {"bpp": 8 * sum(map(len, payloads)) / n}
            if timing:
                row["encode_ms"] = _best_ms(lambda: [codec.encode(LayerBits(m)) for m in symbols], repeat)
                row["decode_ms"] = _best_ms(
                    lambda: [codec.decode(memoryview(p), lb.geom) for p, lb in zip(payloads, layers)], repeat
                )
            out["codecs"][codec.name] = row
    shapes = [m.shape for m in masks]
    args = dict(shapes=shapes, sender=1, round=1, fingerprint=FP, fleet=FLEET)
    b = (0, base) if base is not None else None
    enc = encode_frame_stats(masks, base=b, **args)
    auto = {
        "bpp": 8 * enc.payload_bytes / n,
        "frame_bpp": enc.bits_per_param,
        "ratio": (8 * enc.payload_bytes / order0) if order0 else None,
        "frame_ratio": (8 * len(enc.data) / order0) if order0 else None,
        "picked": sorted({s.codec for s in enc.layers}),
    }
    if timing:
        dec_args = dict(shapes=shapes, fingerprint=FP, fleet=FLEET, base_lookup=lambda s, r: base)
        auto["encode_ms"] = _best_ms(lambda: encode_frame_stats(masks, base=b, **args), repeat)
        auto["decode_ms"] = _best_ms(lambda: decode_frame(enc.data, **dec_args), repeat)
    out["codecs"]["auto"] = auto
    return out


def synthetic_cases(shapes: Sequence[tuple[int, ...]], rounds: int, seed: int) -> list[tuple[str, Masks, Masks | None]]:
    cases: list[tuple[str, Masks, Masks | None]] = []
    for keep in (0.1, 0.3, 0.5):
        cases.append((f"key keep={keep}", synthetic_history(shapes, keep, 1, seed)[0], None))
    hist = synthetic_history(shapes, 0.3, rounds, seed)
    cases.append(("delta early (r1 vs r0)", hist[1], hist[0]))
    cases.append((f"delta late (r{rounds - 1} vs r{rounds - 2})", hist[-1], hist[-2]))
    return cases


def policy_replay(history: Sequence[Masks], key_interval: int = KEY_INTERVAL) -> dict:
    """Every round of ``history`` through the nodes' own sending policy (see exchange.py)."""
    enc = MaskEncoderState(key_interval=key_interval, optimistic=True)
    shapes = [m.shape for m in history[0]]
    n = sum(m.size for m in history[0])
    frames = []
    for r, masks in enumerate(history):
        f = enc.encode(masks, round=r, shapes=shapes, sender=0, fingerprint=FP, fleet=FLEET)
        row = {"round": r, "kind": f.kind, "base_round": f.base_round,
               "payload_bpp": 8 * f.payload_bytes / n, "frame_bpp": f.bits_per_param}
        frames.append(row)
    def mean(key: str, kind: str | None = None) -> float | None:
        xs = [f[key] for f in frames if kind is None or f["kind"] == kind]
        return float(np.mean(xs)) if xs else None
    return {
        "rounds": len(frames), "key_interval": key_interval,
        "keys": sum(f["kind"] == "key" for f in frames), "deltas": sum(f["kind"] != "key" for f in frames),
        "mean_frame_bpp": mean("frame_bpp"), "mean_payload_bpp": mean("payload_bpp"),
        "mean_key_frame_bpp": mean("frame_bpp", "key"), "mean_delta_frame_bpp": mean("frame_bpp", "delta"),
        "per_round": frames,
    }


def history_label(history: Sequence[Masks], info: dict | None) -> str:
    keep = sum(int(m.sum()) for m in history[0]) / sum(m.size for m in history[0])
    if info:
        return f"{info.get('model', '?')}/{info.get('granularity', '?')} keep={info.get('keep', round(keep, 3))}"
    return f"keep~{keep:.3f}"


def analyse_history(label: str, history: Sequence[Masks], info: dict | None, *, repeat: int, quiet: bool) -> tuple[dict, list]:
    """Full codec tables on key/delta picks, every frame's auto/order-0 ratio, the policy mean."""
    n = sum(m.size for m in history[0])
    R = len(history)
    out: dict = {"label": label, "rounds": R, "params": n, "info": {k: v for k, v in (info or {}).items()
                                                                      if k != "live_frames"}, "picks": []}
    picks = [("key r0 (initial)", history[0], None)]
    if R > 1:
        picks += [(f"key r{R - 1} (last)", history[-1], None), ("delta early r1 vs r0", history[1], history[0])]
    if R > 3:
        picks += [("delta r2 vs r1", history[2], history[1])]
    if R > 2:
        picks += [(f"delta late r{R - 1} vs r{R - 2}", history[-1], history[-2])]
    for name, masks, base in picks:
        res = measure(masks, base, timing=True, repeat=repeat)
        out["picks"].append({"case": name, **res})
        if not quiet:
            print_case(f"{name} [{label}, real, {n} params]", res, {"real": res})
    checked = []
    for r in range(R):
        checked.append((f"key r{r}", measure(history[r], None, timing=False, repeat=1, codecs=False)))
        if r:
            checked.append((f"delta r{r} vs r{r - 1}", measure(history[r], history[r - 1], timing=False, repeat=1,
                                                               codecs=False)))
    out["frames"] = [{"case": c, "order0_bound_bpp": res["order0_bound_bpp"],
                      "channel_bound_bpp": res["channel_bound_bpp"], "auto_bpp": res["codecs"]["auto"]["bpp"],
                      "auto_frame_bpp": res["codecs"]["auto"]["frame_bpp"], "ratio": res["codecs"]["auto"]["ratio"],
                      "picked": res["codecs"]["auto"]["picked"]} for c, res in checked]
    out["policy"] = policy_replay(history)
    # the same history at other key intervals (traffic only: the masks are the same); R: one key frame
    out["policy_by_interval"] = {k: policy_replay(history, k)["mean_frame_bpp"]
                                 for k in sorted({10, 50, KEY_INTERVAL, max(R, 1)})}
    if info and info.get("live_frames"):
        live = info["live_frames"]
        out["live"] = {"mean_frame_bpp": float(np.mean([8 * f["frame_bytes"] / f["elements"] for f in live])),
                       "keys": sum(f["kind"] == "key" for f in live)}
    return out, checked


def print_history_summary(a: dict) -> None:
    frames = a["frames"]
    keys = [f for f in frames if f["case"].startswith("key")]
    deltas = [f for f in frames if f["case"].startswith("delta")]
    print(f"\n== {a['label']}: {a['rounds']} rounds, {a['params']} params, every frame (auto = chosen codec)")
    if a["info"].get("mean_acc"):
        print("  mean node accuracy: " + ", ".join(f"r{r + 1} {acc:.3f}" for r, acc in a["info"]["mean_acc"]))
    kr = [f["ratio"] for f in keys if f["ratio"]]
    print(f"  key frames ({len(keys)}): order-0 bound {min(f['order0_bound_bpp'] for f in keys):.4f}.."
          f"{max(f['order0_bound_bpp'] for f in keys):.4f} b/p, per-channel bound "
          f"{min(f['channel_bound_bpp'] for f in keys):.4f}..{max(f['channel_bound_bpp'] for f in keys):.4f}, "
          f"auto {min(f['auto_bpp'] for f in keys):.4f}..{max(f['auto_bpp'] for f in keys):.4f}, "
          f"auto/order-0 x{min(kr):.4f}..x{max(kr):.4f}")
    if deltas:
        big = [f for f in deltas if f["order0_bound_bpp"] >= BOUND_FLOOR]
        print(f"  deltas ({len(deltas)}, {len(big)} with bound >= {BOUND_FLOOR}): auto/order-0 worst "
              f"x{max((f['ratio'] for f in big), default=0):.4f}")
        print(f"  {'delta':<18}{'order0':>9}{'per-chan':>10}{'auto':>9}{'x order0':>10}{'frame b/p':>11}  picked")
        R = a["rounds"]
        show = sorted({r for r in (1, 2, 3, 5, 10, 20, 30, 50, 75, 100, 150, R - 1) if 1 <= r < R})
        for f in deltas:
            r = int(f["case"].split()[1][1:])
            if r in show:
                print(f"  {f['case']:<18}{f['order0_bound_bpp']:>9.5f}{f['channel_bound_bpp']:>10.5f}"
                      f"{f['auto_bpp']:>9.5f}{_fmt(f['ratio'], '.4f'):>10}{f['auto_frame_bpp']:>11.5f}  "
                      f"{','.join(f['picked'])}")
    p = a["policy"]
    print(f"  real policy (MaskEncoderState(key_interval={p['key_interval']}, optimistic=True)), {p['rounds']} rounds, "
          f"{p['keys']} key + {p['deltas']} delta frames:")
    print(f"    mean {p['mean_frame_bpp']:.4f} bits/param whole frame ({p['mean_payload_bpp']:.4f} payload); "
          f"key frames {p['mean_key_frame_bpp']:.4f}, deltas {_fmt(p['mean_delta_frame_bpp'])}  "
          f"[raw bitmap 1.0, dense fp32 32]")
    sweep = ", ".join(f"{k}: {v:.4f}" for k, v in a["policy_by_interval"].items())
    print(f"    mean whole-frame bits/param by key interval (rounds): {sweep}")
    if "live" in a:
        print(f"    node 0's live Exchange in the run: mean {a['live']['mean_frame_bpp']:.4f} b/p, "
              f"{a['live']['keys']} key frames")


# --- report --------------------------------------------------------------------------


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def print_case(name: str, sized: dict, timed: dict[str, dict]) -> None:
    print(f"\n== {name}: order-0 bound {sized['order0_bound_bpp']:.4f} bits/param, "
          f"per-channel bound {sized['channel_bound_bpp']:.4f}")  # fmt: skip
    sizes = list(timed)
    head = f"  {'codec':<15}{'bits/param':>11}{'x order0':>10}"
    for s in sizes:
        head += f"{'enc ms ' + s:>13}{'dec ms ' + s:>13}"
    print(head)
    for codec, row in sized["codecs"].items():
        ratio = row["bpp"] / sized["order0_bound_bpp"] if sized["order0_bound_bpp"] else None
        line = f"  {codec:<15}{row['bpp']:>11.4f}{_fmt(ratio, '.3f'):>10}"
        for s in sizes:
            t = timed[s]["codecs"].get(codec, {})
            line += f"{_fmt(t.get('encode_ms'), '.1f'):>13}{_fmt(t.get('decode_ms'), '.1f'):>13}"
        if codec == "auto":
            line += f"   picked {','.join(row['picked'])}; whole frame {row['frame_bpp']:.4f} b/p"
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--masks", type=Path, action="append",
                    help="npz mask history (r{round:04d}_l{layer:02d} arrays); may be repeated")
    ap.add_argument("--train", action="store_true", help="record masks from a real in-process mce-pl run")
    ap.add_argument("--model", default="paper-cnn", help="--train: model (default paper-cnn)")
    ap.add_argument("--granularity", default="unstructured", choices=("unstructured", "channel"))
    ap.add_argument("--keep", type=float, default=0.3, help="--train: keep ratio (default 0.3)")
    ap.add_argument("--nodes", type=int, default=4, help="--train: nodes on a ring (default 4)")
    ap.add_argument("--partition", default="classes:3", help="--train: partition (default classes:3)")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--save-masks", type=Path, help="--train: save node 0's mask history here (+ .json details)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds: synthetic (default 30) or --train (default 40)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats, best taken (default 3)")
    ap.add_argument("--no-10m", action="store_true", help="skip the 10M-parameter timings")
    ap.add_argument("--no-timing", action="store_true", help="skip the synthetic 1M/10M timings")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    args = ap.parse_args(argv)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))
    if args.train and args.masks:
        ap.error("--train and --masks are exclusive")

    report: dict = {"cases": [], "targets": {}}
    histories: list[tuple[str, list[Masks], dict | None]] = []
    if args.train:
        from codec_train import save_npz, train_history  # tools/codec_train.py

        rounds = args.rounds or 40
        log(f"mask source: REAL mce-pl training ({args.nodes} nodes, ring, fashion-mnist, {args.partition}, "
            f"{args.model}, {args.granularity}, keep {args.keep}, {rounds} rounds); recording node 0")
        hist, info = train_history(model=args.model, granularity=args.granularity, keep=args.keep, rounds=rounds,
                                   nodes=args.nodes, partition=args.partition, data_dir=args.data_dir,
                                   seed=args.seed, log=log)
        log(f"  trained in {info['seconds']:.0f} s ({info['seconds'] / rounds:.2f} s/round)")
        if args.save_masks:
            save_npz(args.save_masks, hist)
            args.save_masks.with_suffix(".json").write_text(json.dumps(info, indent=1))
            log(f"  saved {args.save_masks} (+ {args.save_masks.with_suffix('.json').name})")
        histories.append((history_label(hist, info), hist, info))
        report["source"] = (f"real mce-pl run: {args.model}/{args.granularity} keep {args.keep}, {rounds} rounds, "
                            f"{args.nodes} nodes ring fashion-mnist {args.partition}, node 0's published masks")
    elif args.masks:
        for path in args.masks:
            hist = load_npz(path)
            side = path.with_suffix(".json")
            info = json.loads(side.read_text()) if side.exists() else None
            histories.append((history_label(hist, info), hist, info))
        report["source"] = "recorded masks from " + ", ".join(
            f"{p} ({lbl}, {len(h)} rounds)" for p, (lbl, h, _) in zip(args.masks, histories))
    else:
        report["source"] = (
            f"synthetic generator (per-channel keep, decaying drift; seed {args.seed}, {args.rounds or 30} rounds)"
        )
    synth_rounds = args.rounds or 30
    if not args.json:
        print(f"mask source: {report['source']}")

    checked = []
    timed: dict[str, list[dict]] = {}
    if not args.no_timing:
        timing_models = {"1M": SHAPES_1M} if args.no_10m else {"1M": SHAPES_1M, "10M": SHAPES_10M}
        if not args.json:
            print("timings: synthetic " + " and ".join(timing_models) + f"-parameter models, best of {args.repeat}")
        timed_cases = {label: synthetic_cases(shapes, synth_rounds, args.seed) for label, shapes in timing_models.items()}
        timed = {label: [measure(m, b, timing=True, repeat=args.repeat) for _, m, b in cases]
                 for label, cases in timed_cases.items()}
        for i, (name, masks, base) in enumerate(timed_cases["1M"]):
            sized = timed["1M"][i]
            entry = {"case": f"synthetic {name}", **sized, "timing": {label: timed[label][i]["codecs"] for label in timed}}
            report["cases"].append(entry)
            if not args.json:
                print_case(f"{name} [1M synthetic{' — timing model' if histories else ''}]", sized,
                           {label: timed[label][i] for label in timed})
        if not histories:
            checked = [(name, res) for (name, _, _), res in zip(timed_cases["1M"], timed["1M"])]

    # Ratio target: every key frame and every delta with a bound >= 0.01 bits/param.
    report["histories"] = []
    for label, hist, info in histories:
        a, chk = analyse_history(label, hist, info, repeat=args.repeat, quiet=args.json)
        report["histories"].append(a)
        checked += [(f"{label}: {name}", res) for name, res in chk]
        if not args.json:
            print_history_summary(a)
    seq_start = len(checked)
    if not histories:
        hist = synthetic_history(SHAPES_1M, 0.3, synth_rounds, args.seed)
        checked += [
            (f"delta r{r} vs r{r - 1}", measure(hist[r], hist[r - 1], timing=False, repeat=1, codecs=False))
            for r in range(1, len(hist))
        ]
    worst, worst_name = 0.0, None
    fails = []
    for name, res in checked:
        ratio = res["codecs"]["auto"]["ratio"]
        is_delta = name.split(": ")[-1].startswith("delta")
        if ratio is None or (is_delta and res["order0_bound_bpp"] < BOUND_FLOOR):
            continue
        if ratio > worst:
            worst, worst_name = ratio, name
        if ratio > RATIO_TARGET:
            fails.append(name)
    if not histories and not args.json:
        print("\n== synthetic 1M delta sequence (keep 0.3): payload vs order-0 bound, bits/param")
        for name, res in checked[seq_start:]:
            auto = res["codecs"]["auto"]
            exempt = " (exempt)" if res["order0_bound_bpp"] < BOUND_FLOOR else ""
            print(f"  {name:<16} bound {res['order0_bound_bpp']:.5f}  auto {auto['bpp']:.5f}  "
                  f"x{_fmt(auto['ratio'], '.4f')}  frame x{_fmt(auto['frame_ratio'], '.4f')}{exempt}")  # fmt: skip
    targets: dict = {
        "ratio_worst": worst, "ratio_worst_frame": worst_name, "ratio_ok": not fails,
        "ratio_failures": fails, "frames_checked": len(checked),
    }
    ok = not fails
    if timed:
        t1m = min(c["codecs"]["auto"]["encode_ms"] + c["codecs"]["auto"]["decode_ms"] for c in timed["1M"][:3])
        t1m_worst = max(c["codecs"]["auto"]["encode_ms"] + c["codecs"]["auto"]["decode_ms"] for c in timed["1M"])
        targets.update(enc_dec_1m_ms_worst_case=t1m_worst, enc_dec_1m_ms_best_case=t1m,
                       time_ok=t1m_worst <= TIME_TARGET_MS)
        if "10M" in timed:
            targets["enc_dec_10m_ms_worst_case"] = max(c["codecs"]["auto"]["encode_ms"] + c["codecs"]["auto"]["decode_ms"]
                                                       for c in timed["10M"])
        ok = ok and targets["time_ok"]
    policy = [(a["label"], a["policy"]) for a in report["histories"]
              if abs(a["info"].get("keep", -1) - 0.3) < 1e-9 or (not a["info"] and a["label"] == "keep~0.300")]
    if policy:
        targets["policy_mean_bpp_keep03"] = {lbl: p["mean_frame_bpp"] for lbl, p in policy}
        targets["policy_ok"] = all(p["mean_frame_bpp"] <= POLICY_TARGET_BPP for _, p in policy)
        ok = ok and targets["policy_ok"]
    report["targets"] = targets
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_overview(report)
        t = targets
        print(f"\ntargets: worst auto/order-0 ratio {worst:.4f} ({worst_name}) over {len(checked)} frames "
              f"(deltas < {BOUND_FLOOR} b/p exempt; <= {RATIO_TARGET}): {'PASS' if t['ratio_ok'] else 'FAIL ' + ', '.join(fails)}")
        if timed:
            print(f"         1M encode+decode, worst case {t['enc_dec_1m_ms_worst_case']:.1f} ms (<= {TIME_TARGET_MS} ms): "
                  f"{'PASS' if t['time_ok'] else 'FAIL'}"
                  + (f"; 10M worst case {t['enc_dec_10m_ms_worst_case']:.1f} ms" if "enc_dec_10m_ms_worst_case" in t else ""))
        for lbl, p in policy:
            print(f"         mean bits/param, real policy, {lbl}, {p['rounds']} rounds: {p['mean_frame_bpp']:.4f} "
                  f"(<= {POLICY_TARGET_BPP}): {'PASS' if p['mean_frame_bpp'] <= POLICY_TARGET_BPP else 'FAIL'}")
    return 0 if ok else 1


def print_overview(report: dict) -> None:
    """One table over all real histories: bounds and the chosen codec on key/delta picks, the policy mean."""
    if not report.get("histories"):
        return
    print("\n== overview (bits/param; auto = the encoder's per-layer choice; payload only unless 'frame')")
    print(f"  {'history':<34}{'case':<26}{'order0':>9}{'per-chan':>10}{'auto':>9}{'x order0':>10}"
          + "".join(f"{c:>15}" for c in CODEC_ORDER))
    for a in report["histories"]:
        for pk in a["picks"]:
            row = f"  {a['label']:<34}{pk['case']:<26}{pk['order0_bound_bpp']:>9.4f}{pk['channel_bound_bpp']:>10.4f}"
            auto = pk["codecs"]["auto"]
            row += f"{auto['bpp']:>9.4f}{_fmt(auto['ratio'], '.4f'):>10}"
            row += "".join(f"{pk['codecs'][c]['bpp']:>15.4f}" if c in pk["codecs"] else f"{'-':>15}" for c in CODEC_ORDER)
            print(row)
        p = a["policy"]
        print(f"  {a['label']:<34}{'policy mean, ' + str(p['rounds']) + ' rounds':<26}{'':>9}{'':>10}"
              f"{p['mean_payload_bpp']:>9.4f}{'':>10}   whole frame {p['mean_frame_bpp']:.4f}")


CODEC_ORDER = [c.name for c in CODECS]


if __name__ == "__main__":
    raise SystemExit(main())
