#!/usr/bin/env python3
"""Benchmark the mask codecs: size against entropy bounds, and encode/decode time.

Sources of masks:

* ``--masks FILE.npz``: a recorded mask history, arrays named ``r{round:04d}_l{layer:02d}``
  (bool or 0/1, each of its layer's shape, dim 0 = output channels). Every round is
  measured as a key frame and every round after the first as a delta on the previous.
* otherwise a built-in synthetic generator that mimics training: per-layer scores
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

from dslth_edge.wire import decode_frame, encode_frame_stats  # noqa: E402
from dslth_edge.wire.ans import entropy_bits  # noqa: E402
from dslth_edge.wire.codecs import CODECS  # noqa: E402
from dslth_edge.wire.layer import LayerBits  # noqa: E402

FP = hashlib.sha256(b"bench weights").digest()
FLEET = "bench"
RATIO_TARGET = 1.02
BOUND_FLOOR = 0.01  # bits/param: deltas below this are exempt from the ratio target
TIME_TARGET_MS = 30.0

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
    ap.add_argument("--masks", type=Path, help="npz mask history (r{round:04d}_l{layer:02d} arrays)")
    ap.add_argument("--rounds", type=int, default=30, help="synthetic rounds (default 30)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats, best taken (default 3)")
    ap.add_argument("--no-10m", action="store_true", help="skip the 10M-parameter timings")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    args = ap.parse_args(argv)

    report: dict = {"cases": [], "targets": {}}
    if args.masks:
        history = load_npz(args.masks)
        report["source"] = f"recorded masks from {args.masks} ({len(history)} rounds)"
        size_cases = [(f"key r{r}", h, None) for r, h in enumerate(history)]
        size_cases += [(f"delta r{r} vs r{r - 1}", history[r], history[r - 1]) for r in range(1, len(history))]
    else:
        report["source"] = (
            f"synthetic generator (per-channel keep, decaying drift; seed {args.seed}, {args.rounds} rounds)"
        )
        size_cases = []
    if not args.json:
        print(f"mask source: {report['source']}")
        print("timings: synthetic 1M" + ("" if args.no_10m else " and 10M") + f"-parameter models, best of {args.repeat}")

    timing_models = {"1M": SHAPES_1M} if args.no_10m else {"1M": SHAPES_1M, "10M": SHAPES_10M}
    timed_cases = {label: synthetic_cases(shapes, args.rounds, args.seed) for label, shapes in timing_models.items()}
    timed = {
        label: [measure(m, b, timing=True, repeat=args.repeat) for _, m, b in cases] for label, cases in timed_cases.items()
    }
    for i, (name, masks, base) in enumerate(timed_cases["1M"]):
        sized = timed["1M"][i]
        entry = {"case": name, **sized, "timing": {label: timed[label][i]["codecs"] for label in timed}}
        report["cases"].append(entry)
        if not args.json:
            print_case(f"{name} [1M synthetic]", sized, {label: timed[label][i] for label in timed})

    # Ratio target: every key frame and every delta with a bound >= 0.01 bits/param.
    checked = []
    if args.masks:
        n_rec = sum(m.size for m in history[0])
        picks = [("key first round", history[0], None), ("key last round", history[-1], None)]
        if len(history) > 1:
            picks += [("delta early (r1 vs r0)", history[1], history[0]), ("delta late", history[-1], history[-2])]
        for name, masks, base in picks:
            res = measure(masks, base, timing=True, repeat=args.repeat)
            report["cases"].append({"case": f"recorded {name}", **res})
            if not args.json:
                print_case(f"{name} [recorded, {n_rec} params]", res, {"rec": res})
        for name, masks, base in size_cases:
            res = measure(masks, base, timing=False, repeat=1, codecs=False)
            checked.append((name, res))
        if not args.json:
            print(f"\n== recorded history: {len(size_cases)} frames")
            for name, res in checked:
                auto = res["codecs"]["auto"]
                print(f"  {name:<22} bound {res['order0_bound_bpp']:.4f}  auto {auto['bpp']:.4f} "
                      f"x{_fmt(auto['ratio'], '.4f')}  ({','.join(auto['picked'])})")  # fmt: skip
    else:
        hist = synthetic_history(SHAPES_1M, 0.3, args.rounds, args.seed)
        checked = [(name, res) for (name, _, _), res in zip(timed_cases["1M"], timed["1M"])]
        checked += [
            (f"delta r{r} vs r{r - 1}", measure(hist[r], hist[r - 1], timing=False, repeat=1, codecs=False))
            for r in range(1, len(hist))
        ]
    worst, worst_name = 0.0, None
    fails = []
    for name, res in checked:
        ratio = res["codecs"]["auto"]["ratio"]
        if ratio is None or (name.startswith("delta") and res["order0_bound_bpp"] < BOUND_FLOOR):
            continue
        if ratio > worst:
            worst, worst_name = ratio, name
        if ratio > RATIO_TARGET:
            fails.append(name)
    if not args.masks and not args.json:
        print(f"\n== synthetic 1M delta sequence (keep 0.3): payload vs order-0 bound, bits/param")
        for name, res in checked[len(timed_cases["1M"]) :]:
            auto = res["codecs"]["auto"]
            exempt = " (exempt)" if res["order0_bound_bpp"] < BOUND_FLOOR else ""
            print(f"  {name:<16} bound {res['order0_bound_bpp']:.5f}  auto {auto['bpp']:.5f}  "
                  f"x{_fmt(auto['ratio'], '.4f')}  frame x{_fmt(auto['frame_ratio'], '.4f')}{exempt}")  # fmt: skip
    t1m = min(c["codecs"]["auto"]["encode_ms"] + c["codecs"]["auto"]["decode_ms"] for c in timed["1M"][:3])
    t1m_worst = max(c["codecs"]["auto"]["encode_ms"] + c["codecs"]["auto"]["decode_ms"] for c in timed["1M"])
    report["targets"] = {
        "ratio_worst": worst,
        "ratio_worst_frame": worst_name,
        "ratio_ok": not fails,
        "ratio_failures": fails,
        "frames_checked": len(checked),
        "enc_dec_1m_ms_worst_case": t1m_worst,
        "enc_dec_1m_ms_best_case": t1m,
        "time_ok": t1m_worst <= TIME_TARGET_MS,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        t = report["targets"]
        print(f"\ntargets: worst auto/order-0 ratio {worst:.4f} ({worst_name}) over {len(checked)} frames "
              f"(deltas < {BOUND_FLOOR} b/p exempt): {'PASS' if t['ratio_ok'] else 'FAIL ' + ', '.join(fails)}")
        print(f"         1M encode+decode, worst case {t1m_worst:.1f} ms (<= {TIME_TARGET_MS} ms): "
              f"{'PASS' if t['time_ok'] else 'FAIL'}")  # fmt: skip
    return 0 if report["targets"]["ratio_ok"] and report["targets"]["time_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
