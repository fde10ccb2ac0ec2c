#!/usr/bin/env python3
"""Reproduce the paper's experiments (E1-E3) with ``dslth_edge.fleet.simulate``.

Fashion-MNIST by default; CIFAR-10 when ``--data-dir`` points at cifar-10-batches-py.
Every run writes its own run directory under ``--out``. The grid survives any number of
sittings: a run whose summary.json exists (with the same options) is read, not rerun;
an unfinished run continues from its last checkpoint (``simulate(resume=True)``, bit
for bit as if never interrupted); ``--budget-min`` stops starting new work after that
many minutes, so a sitting can be sized. A configuration that two experiments share
(E1's weight row and E2's dpsgd; E3's paper-4 column and E2's full data) runs once:
any finished run under ``--out`` with the same options is reused. The tables are
rendered from whatever is finished to ``--out/results.md`` and ``--out/results.json``:
final accuracy and its mean over the last 5 evaluations (mean ± std over seeds), bytes,
bytes to target, where a mask run's bits went (headers, periodic key frames, deltas),
and PNG curves (E2 against cumulative bytes, the others against rounds).

The paper's setting: ``--preset paper`` (the authors' code: lr 10, no momentum, one
mini-batch of 128 per round, 400 rounds, keep 0.3 for conv and 0.9 for FC layers)
``--model paper-cnn --seeds 0,1,2``. ``--presets paper,default`` runs the mask-learning
rows (mce-pl, consensus, local) under both presets; dense baselines do not depend on it.

    E1  DSLTH verification: mask training (mce-pl) at keep 0.1/0.3/0.5 vs weight training (dpsgd)
    E2  communication: mce-pl, consensus, local, dpsgd, dpsgd-ft; accuracy vs bytes, bytes to target
    E3  heterogeneity: paper splits 3/4/5 classes; scarce data; ring vs paper graph vs full
    EW  width: mce-pl vs local on mcu-cnn and its 2x/4x-channel variants (--width-models)
    EA  the authors' setting: mce-pl vs local on the paper CNN and the authors' network
        (--authors-models), under the preset's initialisation (paper: the authors')
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from dslth_edge.data import load_dataset
from dslth_edge.fleet.plan import FleetOptions, recorded_options
from dslth_edge.fleet.simulator import resume_round, simulate
from dslth_edge.fleet.summary import bytes_to_reach
from dslth_edge.learn.algorithm import preset_run
from dslth_edge.learn.keep_spec import model_layer_kinds
from dslth_edge.learn.names import INIT_SCHEMES
from dslth_edge.wire.frame import CRC_BYTES, ENTRY_BYTES, HEADER_BYTES

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "paper"
ALGOS = ("mce-pl", "consensus", "local", "dpsgd", "dpsgd-ft")


MASK_ALGOS = ("mce-pl", "consensus", "local")
SENDS_MASKS = ("mce-pl", "consensus")  # the runs whose traffic is mask frames
TITLES = {"E1": "E1: mask training (mce-pl) vs weight training (dpsgd)", "E2": "E2: accuracy against traffic",
          "E3": "E3: heterogeneity (classes per node, scarce data, topology)", "EW": "EW: width",
          "EA": "EA: the authors' setting (their init; paper CNN and their network)"}


def runs_for(exp: str, bases: dict[str, FleetOptions], args: argparse.Namespace) -> list[tuple[str, str, FleetOptions]]:
    """(table row, column, options) of every run of one experiment (seed added later).

    ``bases`` maps each preset to its base options; mask-learning rows get one run per
    preset (labelled with it when there are several), dense rows only the first preset's.
    """
    paper = Path(args.paper_dir)
    paper4 = str(paper / "train_counts_4.txt")
    first = next(iter(bases.values()))
    several = len(bases) > 1
    out: list[tuple[str, str, FleetOptions]] = []

    def rows(algo: str) -> list[tuple[str, FleetOptions]]:
        if algo not in MASK_ALGOS:
            return [(algo, replace(first, algorithm=algo))]
        return [(f"{algo} ({name})" if several else algo, replace(b, algorithm=algo)) for name, b in bases.items()]

    if exp == "E1":
        for keep in (0.1, 0.3, 0.5):
            for label, o in rows("mce-pl"):
                out.append((f"mask ({label}) keep {keep}", "E1", replace(o, keep=keep)))
        out.append(("weights (dpsgd)", "E1", replace(first, algorithm="dpsgd")))
    elif exp == "E2":
        for setting, scarce in (("full data", None), (f"scarce {args.scarce}", args.scarce)):
            if args.settings and setting.split()[0] not in args.settings:
                continue
            for algo in args.algorithms:
                for label, o in rows(algo):
                    out.append((label, setting, replace(o, scarce=scarce)))
    elif exp == "E3":
        for k in (3, 4, 5):
            for algo in ("mce-pl", "local"):
                for label, o in rows(algo):
                    out.append((label, f"paper-{k}", replace(o, partition_file=str(paper / f"train_counts_{k}.txt"))))
        for algo in ("mce-pl", "local"):  # where the per-node cap binds (E2's scarce column)
            for label, o in rows(algo):
                out.append((label, f"scarce {args.scarce}", replace(o, scarce=args.scarce, partition_file=paper4)))
        for topo, name in (("ring", "ring"), (str(paper / "adjacency_20.txt"), "paper graph"), ("full", "full")):
            for label, o in rows("mce-pl"):
                out.append((label, f"topology {name}", replace(o, topology=topo, partition_file=paper4)))
    elif exp == "EW":
        # is collaboration's small gain the tiny model? the same run at 1x/2x/4x channels
        for model in args.width_models:
            for algo in ("mce-pl", "local"):
                for label, o in rows(algo):
                    out.append((label, f"model {model}", replace(o, model=model)))
    elif exp == "EA":
        # the authors' setting (issue 26): their network next to the paper CNN, mce-pl and local
        for model in args.authors_models:
            for algo in ("mce-pl", "local"):
                if algo not in args.algorithms:
                    continue
                for label, o in rows(algo):
                    out.append((label, f"model {model}", replace(o, model=model)))
    else:
        raise SystemExit(f"unknown experiment {exp!r}: choose from E1, E2, E3, EW, EA")
    return out


_SUMMARIES: dict[Path, tuple[float, dict[str, Any]]] = {}


def _read_summary(path: Path) -> dict[str, Any]:
    """A summary.json, parsed once per version of the file (every run's lookup scans them all)."""
    mtime = path.stat().st_mtime
    cached = _SUMMARIES.get(path)
    if cached is None or cached[0] != mtime:
        cached = _SUMMARIES[path] = (mtime, json.loads(path.read_text()))
    return cached[1]


def finished_summary(o: FleetOptions, root: Path) -> dict[str, Any] | None:
    """The summary of a finished run with exactly these options, else None.

    The run's own directory first; then any finished run under ``root`` with the same
    options (E1's weight row is E2's dpsgd, E3's paper-4 and paper-graph columns are
    E2's full-data runs), so one configuration is trained once in a grid. The key-frame
    interval only matters to runs that send mask frames.
    """
    def comparable(options: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in recorded_options(options).items() if k != "out"}
        if out.get("algorithm") not in SENDS_MASKS:
            out.pop("key_interval", None)
        return out

    mine = comparable(json.loads(json.dumps(asdict(o))))

    def same(path: Path) -> dict[str, Any] | None:
        try:
            summary = _read_summary(path)
        except (OSError, ValueError):
            return None
        return summary if comparable(summary.get("options", {})) == mine and summary.get("rounds") == o.rounds else None

    own = Path(str(o.out)) / "summary.json"
    if own.is_file() and (summary := same(own)) is not None:
        return summary
    for path in sorted(root.glob("**/summary.json")):
        if (summary := same(path)) is not None:
            return summary
    return None


def bits_per_param_round(summary: dict[str, Any], o: FleetOptions, input_shape: tuple[int, int, int],
                         num_classes: int) -> float | None:
    """Mean encoded bits per fixed weight per node per round, over the run (None: a run that sends nothing)."""
    if o.algorithm == "local":
        return None
    _, sizes = model_layer_kinds(o.model, input_shape, num_classes)
    return 8 * summary["final"]["bytes_per_node_round"] / sum(sizes)


def traffic_parts(summary: dict[str, Any], o: FleetOptions, input_shape: tuple[int, int, int],
                  num_classes: int) -> dict[str, float] | None:
    """Where a mask run's encoded bits per parameter per round went (None: dense or local).

    Exact: ``header`` (every frame's header, layer table and CRC; one broadcast frame per
    node per round) and ``periodic_keys`` (what the key frames of rounds k * key_interval,
    k >= 1, cost beyond a delta, the delta estimated as the mean of the rounds either
    side). ``no_periodic_keys`` is the run's mean with those key frames replaced by that
    estimate: what it would send if key frames went out only at the start and on request.
    """
    if o.algorithm not in SENDS_MASKS:
        return None
    _, sizes = model_layer_kinds(o.model, input_shape, num_classes)
    per_bit = 8 / (o.nodes * sum(sizes))  # bytes of all nodes in one round -> bits/param/round
    sent = [r["bytes_sent"] for r in summary["per_round"]]
    excess = 0.0
    for r in range(o.key_interval, len(sent), o.key_interval):
        either_side = [sent[k] for k in (r - 1, r + 1) if 0 <= k < len(sent)]
        excess += sent[r] - statistics.fmean(either_side)
    mean = statistics.fmean(sent)
    return {"header": o.nodes * (HEADER_BYTES + ENTRY_BYTES * len(sizes) + CRC_BYTES) * per_bit,
            "periodic_keys": excess / len(sent) * per_bit,
            "no_periodic_keys": (mean - excess / len(sent)) * per_bit}


def mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{100 * xs[0]:.2f}"
    return f"{100 * statistics.fmean(xs):.2f} ± {100 * statistics.stdev(xs):.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", default="E1,E2,E3")
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 batches directory (default: Fashion-MNIST)")
    ap.add_argument("--model", default="paper-cnn")
    ap.add_argument("--rounds", type=int, default=None, help="default: the (first) preset's, else 400")
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--presets", "--preset", dest="presets", default="default",
                    help="comma-separated; mask-learning rows run once per preset (paper = the authors' code)")
    ap.add_argument("--settings", default=None, help="E2 only: full and/or scarce (default both)")
    ap.add_argument("--workers", type=int, default=1, help="simulator worker processes per run")
    ap.add_argument("--checkpoint-every", type=int, default=20, help="rounds between resume checkpoints")
    ap.add_argument("--budget-min", type=float, default=None,
                    help="start no new run after this many minutes; a run under way is stopped at its next round, "
                         "checkpointed, and resumed by the next sitting")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--momentum", type=float, default=None)
    ap.add_argument("--beta", type=float, default=None,
                    help="weight of the shift toward the neighbours' mask (eq. 1; default: the preset's); "
                         "another value needs another --out")
    ap.add_argument("--ft-lr", type=float, default=None,
                    help="personal fine-tuning step size η_ft (eq. 5; default: the preset's); another value needs another --out")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--scarce", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--eval-samples", type=int, default=1000)
    ap.add_argument("--profiles", default="jetson-nano,raspberry-pi-4,nrf52840")
    ap.add_argument("--algorithms", default=",".join(ALGOS))
    ap.add_argument("--width-models", default="mcu-cnn,mcu-cnn-x2", help="EW only: the zoo models compared")
    ap.add_argument("--authors-models", default="paper-cnn,authors-cnn", help="EA only: the zoo models compared")
    ap.add_argument("--weight-init", default=None, choices=INIT_SCHEMES, help="fixed weights' init (default: the preset's)")
    ap.add_argument("--score-init", default=None, choices=INIT_SCHEMES, help="initial scores' init (default: the preset's)")
    ap.add_argument("--target", type=float, default=None,
                    help="accuracy for 'bytes to reach' (default: 95%% of the best final accuracy in the setting)")
    ap.add_argument("--keep", default=None, help="keep for every run but E1's (a ratio or conv=R,fc=R; default: the preset's, "
                                                 "else each profile's plan)")
    ap.add_argument("--key-interval", type=int, default=None,
                    help="rounds between periodic key frames (default: the library's; traffic only, the masks are the "
                         "same). Runs before it was an option used 10; another interval needs another --out")
    ap.add_argument("--out", default="runs/reproduce")
    ap.add_argument("--paper-dir", default=str(PAPER), help="the paper's graph and splits (default: ../shared/paper)")
    ap.add_argument("--cached-only", action="store_true", help="render tables from finished runs only; run nothing")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: many small models in lock-step; more threads only spin on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.algorithms = tuple(a for a in args.algorithms.split(",") if a)
    args.width_models = tuple(m for m in args.width_models.split(",") if m)
    args.authors_models = tuple(m for m in args.authors_models.split(",") if m)
    args.settings = tuple(s for s in args.settings.split(",") if s) if args.settings else ()
    presets = [p for p in args.presets.split(",") if p]
    rounds = args.rounds or preset_run(presets[0]).rounds or 400
    dataset = "cifar10" if args.data_dir else "fashion-mnist"
    ds = load_dataset(dataset, args.data_dir)
    over = {k: v for k, v in {"batch_size": args.batch_size, "lr": args.lr, "momentum": args.momentum,
                              "beta": args.beta, "ft_lr": args.ft_lr}.items() if v is not None}
    bases = {p: FleetOptions(nodes=args.nodes, topology=str(Path(args.paper_dir) / "adjacency_20.txt"), dataset=dataset, data_dir=args.data_dir,
                             partition_file=str(Path(args.paper_dir) / "train_counts_4.txt"), profiles=tuple(args.profiles.split(",")),
                             model=args.model, rounds=rounds, eval_every=args.eval_every, eval_samples=args.eval_samples,
                             preset=p, overrides=over, keep=args.keep, weight_init=args.weight_init, score_init=args.score_init,
                             **({} if args.key_interval is None else {"key_interval": args.key_interval}))
             for p in presets}
    t_start = time.monotonic()

    def out_of_time() -> bool:
        return args.budget_min is not None and time.monotonic() - t_start > 60 * args.budget_min
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.out)
    results: dict[str, Any] = {"command": " ".join(sys.argv), "args": vars(args), "experiments": {},
                               "key_interval": next(iter(bases.values())).key_interval}
    for exp in args.experiments.split(","):
        rows = []
        for row, col, opts in runs_for(exp, bases, args):
            per_seed = []
            for seed in seeds:
                tag = f"{exp}/{col}/{row}/{opts.preset}/seed{seed}".replace(" ", "_").replace(".", "p").replace("(", "").replace(")", "")
                o = replace(opts, seed=seed, out=str(root / tag))
                summary = finished_summary(o, root)
                if summary is None and not args.cached_only and not out_of_time():
                    t0 = time.time()
                    try:
                        summary = simulate(o, dataset=ds if args.workers == 1 else None, write_plots=(seed == seeds[0]),
                                           workers=args.workers, resume=True, checkpoint_every=args.checkpoint_every,
                                           stop_requested=out_of_time)
                    except KeyboardInterrupt:
                        print(f"{tag}: budget spent; checkpointed at round {resume_round(o.out)} of {o.rounds}", flush=True)
                        summary = None
                    else:
                        print(f"{tag}: acc {summary['final']['acc_mean']:.4f} in {time.time() - t0:.0f} s "
                              f"(resumed from round {summary['simulator']['resumed_from_round']})", flush=True)
                if summary is None:
                    results.setdefault("unfinished", []).append({"run": tag, "round": resume_round(o.out), "of": o.rounds})
                    continue
                summary["bits_per_param_round"] = bits_per_param_round(summary, o, ds.input_shape, ds.num_classes)
                summary["traffic_parts"] = traffic_parts(summary, o, ds.input_shape, ds.num_classes)
                per_seed.append(summary)
            if not per_seed:
                continue
            rows.append({"seeds": [s["options"]["seed"] for s in per_seed], "row": row, "col": col, "runs": [s["run_dir"] for s in per_seed],
                         "rounds": per_seed[0]["rounds"],
                         "acc": [s["final"]["acc_mean"] for s in per_seed],
                         "bytes_per_round": statistics.fmean(s["final"]["bytes_per_round"] for s in per_seed),
                         "bytes_reference_per_round": statistics.fmean(s["final"]["bytes_reference_per_round"] for s in per_seed),
                         "bits_per_param_round": (statistics.fmean(s["bits_per_param_round"] for s in per_seed)
                                                  if per_seed[0]["bits_per_param_round"] is not None else None),
                         "traffic_parts": ({k: statistics.fmean(s["traffic_parts"][k] for s in per_seed)
                                            for k in per_seed[0]["traffic_parts"]} if per_seed[0]["traffic_parts"] else None),
                         "curve": [[(r["round"], r.get("acc_mean"), r["bytes_cum"]) for r in s["per_round"] if "acc_mean" in r] for s in per_seed]})
        results["experiments"][exp] = rows
        (root / "results.json").parent.mkdir(parents=True, exist_ok=True)
        (root / "results.json").write_text(json.dumps(results, indent=1))
    plot_curves(results, root)
    (root / "results.md").write_text(render(results, args))
    print(render(results, args))
    return 0


def mean_curve(row: dict[str, Any]) -> list[tuple[int, float, float]]:
    """(round, accuracy, cumulative bytes) at each evaluated round, means over the row's seeds."""
    curves = [c for c in row["curve"] if c]
    n = min(len(c) for c in curves)
    return [(curves[0][k][0], statistics.fmean(c[k][1] for c in curves), statistics.fmean(c[k][2] for c in curves))
            for k in range(n)]


def plot_curves(results: dict[str, Any], root: Path) -> None:
    """PNG curves, one line per row (mean over its seeds): E2_<setting>.png, accuracy against
    cumulative encoded bytes; <exp>.png for the others, accuracy against rounds (convergence)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    for exp, rows in results["experiments"].items():
        by_bytes = exp == "E2"
        cols = list(dict.fromkeys(r["col"] for r in rows))
        groups = [(f"{exp}_{c.replace(' ', '_')}", f"{TITLES.get(exp, exp)}, {c}", [r for r in rows if r["col"] == c])
                  for c in cols] if by_bytes else [(exp, TITLES.get(exp, exp), rows)]
        for name, title, members in groups:
            if not members:
                continue
            fig, ax = plt.subplots(figsize=(7, 4.6))
            colours = plt.get_cmap("tab20").colors  # more lines than the default cycle's 10
            for n, r in enumerate(members):
                curve = mean_curve(r)
                xs = [max(b, 1) for _, _, b in curve] if by_bytes else [k + 1 for k, _, _ in curve]
                seeds = f" ({len(r['seeds'])} seeds)" if len(r["seeds"]) > 1 else ""
                label = r["row"] if by_bytes or len(cols) == 1 else f"{r['col']}: {r['row']}"
                ax.plot(xs, [100 * a for _, a, _ in curve], marker=".", label=label + seeds, color=colours[n % 20],
                        linestyle="--" if r["row"].startswith("local") else "-")  # local: dashed
            if by_bytes:
                ax.set(xscale="log", xlabel="cumulative bytes sent, encoded (all nodes; local: 1)")
            else:
                ax.set(xlabel="round")
            ax.set(ylabel="mean personalized accuracy (%)", title=title)
            ax.grid(alpha=0.3), ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(root / f"{name}.png", dpi=100)
            plt.close(fig)


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    """Markdown tables: final accuracy mean ± std over seeds, the last evaluations, bytes, traffic parts."""
    lines = [f"Command: `{results['command']}`", ""]
    for exp, rows in results["experiments"].items():
        if not rows:
            continue
        lines += [f"### {exp}", "", ("| setting | run | seeds | rounds | final acc % (mean ± std over seeds) | "
                  "acc % over the last 5 evaluations | bytes/round encoded | bytes/round reference | "
                  "bits/param/round | bytes to target |"),
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        # target: --target, else 95 % of the best final accuracy (mean over seeds) in the setting
        best = {c: max(statistics.fmean(r["acc"]) for r in rows if r["col"] == c) for c in {r["col"] for r in rows}}
        for r in rows:
            target = args.target or 0.95 * best[r["col"]]
            btt = [bytes_to_reach([{"acc_mean": a, "bytes_cum": b} for _, a, b in curve], target) for curve in r["curve"]]
            if any(b is None for b in btt):
                btt_s = "not reached"
            elif r["bytes_per_round"] == 0:
                btt_s = f"0, sends nothing (target {100 * target:.1f}%)"
            else:
                btt_s = f"{statistics.fmean(btt) / 1e6:.2f} MB (target {100 * target:.1f}%)"
            last5 = mean_std([statistics.fmean(a for _, a, _ in curve[-5:]) for curve in r["curve"] if curve])
            bpp = "-" if r.get("bits_per_param_round") is None else f"{r['bits_per_param_round']:.4f}"
            lines.append(f"| {r['col']} | {r['row']} | {','.join(map(str, r['seeds']))} | {r.get('rounds', '?')} | {mean_std(r['acc'])} | "
                         f"{last5} | {r['bytes_per_round'] / 1e3:.1f} kB | {r['bytes_reference_per_round'] / 1e3:.1f} kB | {bpp} | {btt_s} |")
        parts = [r for r in rows if r.get("traffic_parts")]
        if parts:
            lines += ["", (f"Where the bits went (bits/param/round, mean over seeds): frame headers, the key frames "
                           f"every {results['key_interval']} rounds beyond a delta, and the same run with key frames only at the "
                           "start and on request (estimated):"), "",
                      "| setting | run | bits/param/round | headers | periodic key frames | deltas | without periodic key frames |",
                      "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
            for r in parts:
                t, total = r["traffic_parts"], r["bits_per_param_round"]
                deltas = total - t["header"] - t["periodic_keys"]
                lines.append(f"| {r['col']} | {r['row']} | {total:.4f} | {t['header']:.4f} | {t['periodic_keys']:.4f} | "
                             f"{deltas:.4f} | {t['no_periodic_keys']:.4f} |")
        if exp in ("E1", "EA"):
            lines += ["", "Convergence (mean accuracy % over nodes at evaluated rounds, mean over seeds):", ""]
            for r in rows:
                pts = ", ".join(f"{k + 1}: {100 * a:.1f}" for k, a, _ in mean_curve(r))
                lines.append(f"- {r['row'] if exp == 'E1' else r['col'] + ', ' + r['row']}: {pts}")
        lines.append("")
    if results.get("unfinished"):
        lines += ["Unfinished (resume with the same command):", ""]
        lines += [f"- {u['run']}: checkpoint at round {u['round']} of {u['of']}" for u in results["unfinished"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
