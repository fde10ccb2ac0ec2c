#!/usr/bin/env python3
"""Structured routes compared on a heterogeneous fleet: accuracy, shrunk size, budgets.

For each model and route, one simulated MCE-PL fleet (Fashion-MNIST; the paper-4 split
over the paper graph with 20 nodes, else ``classes:4`` over a ring), profiles mixed as
in the README. Routes (``--granularity`` of every training command, plus options):

``unstructured``  weight-level masks at keep 0.5 for every node, the dense shape kept
                  (the baseline at the same keep ratio; MCU budgets are *not* met);
``channel``       channel-level scores (whole output channels by mean score);
``progressive``   group sparsity on the scores + progressive relative-threshold drop
                  down to the plan's channel counts (the default for nodes that must shrink);
``drop-only``     the progressive route without group sparsity (λ = 0);
``early``         progressive with the channel counts reached after the first round;
``aligned``       channels dropped progressively in the order every node shares (the
                  highest-indexed first): nested shrunk models, no group sparsity, no
                  threshold (``--granularity aligned``; docs/algorithm.md has why it is
                  not the default).

mcu-cnn fits every profile whole, so its structured routes use ``--keep 0.5`` as the
channel fraction (learning quality at the same widths); the paper CNN uses each
profile's own plan. Per route and profile it prints the mean personalized accuracy,
shrunk params and MACs, weight bytes (or the exported file with ``--export``), the
predicted latency on the device, and how many nodes fit every budget; then a dense
narrow model with the shrunk model's exact widths, trained locally on each node for
the same number of steps.

    .venv/bin/python tools/bench_structured.py --nodes 20 --rounds 100     # the full setting
    .venv/bin/python tools/bench_structured.py --nodes 5 --rounds 40 --models mcu-cnn   # reduced

``--deploy`` (issue 23) compares, per node whose plan shrinks, what its owner could
deploy: (a) the fleet's structured mask as exported today (``--deploy-step none``),
(b) the same plus the deploy-time step (finetune), (b') the step as distillation from
the node's own unstructured masked model, (c) a dense model of exactly the shrunk
widths, freshly initialised and trained locally for as many steps as (b) took in
total (mask rounds + deploy steps), (d) unstructured MCE-PL at keep 0.5 (the model
that does not fit). (a), (b), (b') are the exported files, measured with their runtime
(int8 where the profile exports int8); (c) and (d) are torch fp32. Runs and per-node
figures are cached under ``--out`` (rerun to resume):

    nice -n 10 .venv/bin/python tools/bench_structured.py --deploy --models mcu-cnn --rounds 30 \
        --batch-size 32 --seeds 0 --out runs/bench-23
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dslth_edge.data import batch_indices, load_dataset
from dslth_edge.cost.units import BYTES_PER_VALUE
from dslth_edge.device.profiles import load_profile
from dslth_edge.cost.macs import count_macs
from dslth_edge.exporters.shrink import count_params, shrink, shrunk_info
from dslth_edge.fleet.plan import FleetOptions
from dslth_edge.fleet.simulator import simulate
from dslth_edge.cost.analysis import analyze_torch_module
from dslth_edge.cost.latency import predict
from dslth_edge.runs.runinfo import load_run

# the shared paper data: beside the repository (../shared/paper), or two levels up from a worktree
PAPER = next((p for p in (Path(__file__).resolve().parents[1].parent / "shared" / "paper",
                          Path(__file__).resolve().parents[2].parent / "shared" / "paper") if p.is_dir()),
             Path(__file__).resolve().parents[1].parent / "shared" / "paper")
PROFILES = ("jetson-nano", "raspberry-pi-4", "esp32-s3", "stm32h743", "nrf52840")
ROUTES: dict[str, dict[str, Any]] = {
    "unstructured": {"granularity": "unstructured", "keep": 0.5},
    "channel": {"granularity": "channel"},
    "progressive": {"granularity": "progressive", "group_lasso": None, "drop_threshold": None},
    "drop-only": {"granularity": "progressive", "group_lasso": 0.0, "drop_threshold": None},
    "early": {"granularity": "progressive", "group_lasso": None, "drop_threshold": None, "drop_until": 0.0},
    "aligned": {"granularity": "aligned"},
}


def node_figures(run: Path, i: int, export: bool) -> dict[str, Any]:
    """Shrunk params/MACs, bytes, predicted latency and budget checks of node ``i``."""
    info = load_run(run, i, load_data=export)
    cfg = info.config
    profile = load_profile(cfg["profile"])
    shape = info.input_shape
    shrunk = shrink(info.model, shape, channel_multiple=profile.compute.channel_multiple)  # as exported: zero-padded
    ops = list(analyze_torch_module(shrunk, torch.zeros(1, *shape)).ops)
    dtype = profile.export.dtype
    latency = predict(ops, profile, dtype=dtype).total_ms
    params = count_params(shrunk)
    weight_bytes = params * BYTES_PER_VALUE[dtype]
    peak_act = max(op.bytes / 4 - op.params for op in ops) * BYTES_PER_VALUE[dtype]
    ram = weight_bytes + peak_act
    storage = float(weight_bytes)
    ok = (latency <= profile.budget.latency_ms and storage <= profile.model_storage_budget_bytes
          and ram <= profile.model_ram_budget_bytes)
    if export:
        from dslth_edge.exporters.pipeline import ExportOptions, export_node

        rep = export_node(ExportOptions(run=str(info.node_dir), format="tflite",
                                        quantize="int8" if dtype == "int8" else "none", compare_dense=False))
        storage = float(Path(rep.file).stat().st_size)
        ok = bool((rep.budget or {}).get("ok"))
    plan = cfg["extra"].get("plan") or {}
    return {"profile": profile.name, "params": params, "macs": count_macs(shrunk, shape), "bytes": storage,
            "latency_ms": latency, "fits": ok, "plan_macs": plan.get("macs"),
            "widths": list(shrunk_info(shrunk).widths().values()), "shrunk": shrunk, "shape": shape}


def dense_narrow_accuracy(shrunk: torch.nn.Module, run: Path, i: int, steps: int, batch: int, seed: int) -> float:
    """A dense model with the shrunk widths, weights trained locally on node ``i``'s data (SGD 0.01, momentum 0.9)."""
    info = load_run(run, i)
    model = shrunk
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    ds, split = info.dataset, info.split
    assert ds is not None and split is not None
    model.train()
    for step in range(steps):
        idx = batch_indices(split.train_indices, batch, step, seed)
        x, y = torch.from_numpy(ds.train_batch(idx)), torch.from_numpy(ds.y_train[idx])
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        idx = split.test_indices
        correct = 0
        for s in range(0, len(idx), 500):
            part = idx[s:s + 500]
            out = model(torch.from_numpy(ds.test_batch(part)))
            correct += int((out.argmax(1) == torch.from_numpy(ds.y_test[part])).sum())
    return correct / max(1, len(idx))


def _fresh_dense(shrunk: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A dense model of exactly ``shrunk``'s widths, freshly initialised (Kaiming normal, seeded; BN reset)."""
    import copy

    from dslth_edge.learn.masking import init_weights

    model = copy.deepcopy(shrunk)
    stream = 0
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            with torch.no_grad():
                mod.weight.copy_(init_weights(tuple(mod.weight.shape), seed, stream))
                if mod.bias is not None:
                    mod.bias.zero_()
            stream += 1
        elif isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_parameters()
    return model


def _torch_variant(info: Any, profile: Any, step: str, teacher: str | None, steps: int, key: str) -> dict[str, Any]:
    """(a)/(b)/(b') in torch fp32: the shrunk model, after the deploy-time step ``step``."""
    from dslth_edge.exporters.deploy_step import DeployStepOptions, run_deploy_step
    from dslth_edge.exporters.worth import chance_accuracy
    from dslth_edge.runs.runinfo import accuracy

    shrunk = shrink(info.model, info.input_shape, channel_multiple=profile.compute.channel_multiple)
    t = load_run(teacher, load_data=False).model if teacher else None
    model, _ = run_deploy_step(shrunk, info, DeployStepOptions(kind=step, steps=steps), profile, t)
    x, y = info.test_arrays()
    return {key: accuracy(model, x, y), "masked": accuracy(info.model, x, y), "chance": chance_accuracy(y)[0],
            f"{key}_fits": None}


def deploy_comparison(a: argparse.Namespace) -> int:
    """(a)-(d) per shrunk node, cached per node under ``--out``; prints one table per model and seed."""
    from dslth_edge.exporters.deploy_step import plan_shrinks
    from dslth_edge.exporters.pipeline import ExportOptions, export_node

    ds = load_dataset("fashion-mnist")
    paper = a.nodes == 20 and (PAPER / "train_counts_4.txt").is_file()
    partition = f"file:{PAPER / 'train_counts_4.txt'}" if paper else "classes:4"
    topology = str(PAPER / "adjacency_20.txt") if paper else "ring"
    base = Path(a.out or "runs/bench-structured-23")
    print(f"# bench_structured --deploy: {a.nodes} nodes, {a.rounds} rounds, batch {a.batch_size}, partition "
          f"{'paper-4' if paper else partition}, topology {'paper graph' if paper else topology}, "
          f"deploy steps {a.deploy_steps}, seeds {a.seeds}, profiles {a.profiles}", flush=True)
    table: list[dict[str, Any]] = []
    for model in a.models.split(","):
        for seed in (int(x) for x in a.seeds.split(",")):
            runs = {}
            for route, gran, keep in (("progressive", "progressive", 0.5 if model == "mcu-cnn" else None),
                                      ("unstructured", "unstructured", 0.5)):
                run = base / f"{model}-{route}-s{seed}"
                opts = FleetOptions(nodes=a.nodes, topology=topology, dataset="fashion-mnist", partition=partition,
                                    profiles=tuple(a.profiles.split(",")), model=model, keep=keep, granularity=gran,
                                    rounds=a.rounds, eval_every=a.rounds, out=str(run),
                                    overrides={"batch_size": a.batch_size}, seed=seed)
                t0 = time.perf_counter()
                done = (run / "node-0" / "mask.npz").is_file()
                if not done:
                    simulate(opts, dataset=ds, write_plots=False, workers=a.workers, resume=(run / "resume").is_dir())
                print(f"{model} {route} seed {seed}: {'cached' if done else f'{time.perf_counter() - t0:.0f} s'}", flush=True)
                runs[route] = run
            rows = []
            for i in range(a.nodes):
                cache = base / f"{model}-s{seed}-node{i}.json"
                if cache.is_file():
                    rows.append(json.loads(cache.read_text()))
                    continue
                info = load_run(runs["progressive"], i)
                if not plan_shrinks(info.config):
                    continue
                profile = load_profile(info.config["profile"])
                quant = "int8" if profile.export.dtype == "int8" else "none"
                row: dict[str, Any] = {"node": i, "profile": profile.name, "quantize": quant}
                for key, step, teacher in (("a", "none", None), ("b", "finetune", None),
                                           ("b_distill", "distill", str(runs["unstructured"] / f"node-{i}"))):
                    if a.torch_only:  # the same models, measured in torch fp32 (no conversion: compute cut)
                        row.update(_torch_variant(info, profile, step, teacher, a.deploy_steps, key))
                        continue
                    out = base / "exports" / f"{model}-s{seed}" / f"node-{i}-{key}.tflite"
                    rep = export_node(ExportOptions(run=str(runs["progressive"] / f"node-{i}"), format="tflite",
                                                    quantize=quant, out=str(out), compare_dense=False,
                                                    deploy_step=step, deploy_steps=a.deploy_steps, teacher=teacher,
                                                    for_device=True))
                    row[key] = rep.worth["accuracy"]
                    row[f"{key}_fits"] = (rep.budget or {}).get("ok")
                    row["masked"] = rep.worth["masked"]
                    row["chance"] = rep.worth["chance"]
                shrunk = shrink(info.model, info.input_shape, channel_multiple=profile.compute.channel_multiple)
                row["widths"] = list(shrunk_info(shrunk).widths().values())
                row["c_steps"] = a.rounds + a.deploy_steps
                row["c"] = dense_narrow_accuracy(_fresh_dense(shrunk, seed), runs["progressive"], i, row["c_steps"],
                                                 a.batch_size, seed=i)
                d_info = load_run(runs["unstructured"], i)
                x, y = d_info.test_arrays()
                from dslth_edge.runs.runinfo import accuracy

                row["d"] = accuracy(d_info.model, x, y)
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(row, default=float))
                rows.append(row)
                print(f"  node {i} {profile.name}: a {100 * row['a']:.1f} b {100 * row['b']:.1f} "
                      f"b' {100 * row['b_distill']:.1f} c {100 * row['c']:.1f} d {100 * row['d']:.1f}", flush=True)
            if not rows:
                continue
            mean = lambda k: 100 * statistics.fmean(r[k] for r in rows)  # noqa: E731
            near = sum(1 for r in rows for k in ("a", "b", "b_distill") if r[k] < r["chance"] + 0.05)
            print(f"\n## {model} seed {seed}: {len(rows)} shrunk nodes")
            print(f"{'(a) mask':>10}{'(b) +ft':>10}{'(b) +kd':>10}{'(c) dense':>11}{'(d) unstr':>11}{'near chance':>13}")
            print(f"{mean('a'):>10.1f}{mean('b'):>10.1f}{mean('b_distill'):>10.1f}{mean('c'):>11.1f}{mean('d'):>11.1f}"
                  f"{near:>13}", flush=True)
            table.append({"model": model, "seed": seed, "rows": rows})
    if a.json:
        Path(a.json).write_text(json.dumps(table, indent=1, default=float))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--models", default="mcu-cnn,paper-cnn")
    ap.add_argument("--routes", default=",".join(ROUTES))
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--group-lasso", type=float, default=1e-4, help="λ of the progressive routes")
    ap.add_argument("--drop-threshold", type=float, default=0.5, help="τ of the progressive routes (relative)")
    ap.add_argument("--seed", type=int, default=0, help="partition, scores and batches (fixed weights too)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--export", action="store_true", help="export TFLite per node (file size, measured RAM)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense narrow local models")
    ap.add_argument("--json", default=None, help="write all figures here")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--deploy", action="store_true", help="issue 23: (a)-(d) per shrunk node (see the docstring)")
    ap.add_argument("--deploy-steps", type=int, default=100, help="--deploy: steps of the deploy-time step")
    ap.add_argument("--seeds", default="0", help="--deploy: comma-separated seeds")
    ap.add_argument("--torch-only", action="store_true",
                    help="--deploy: measure (a), (b), (b') in torch fp32 instead of exporting files (a compute cut)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.deploy:
        return deploy_comparison(a)
    ds = load_dataset("fashion-mnist")
    paper = a.nodes == 20 and (PAPER / "train_counts_4.txt").is_file()
    partition = f"file:{PAPER / 'train_counts_4.txt'}" if paper else "classes:4"
    topology = str(PAPER / "adjacency_20.txt") if paper else "ring"
    print(f"# bench_structured: {a.nodes} nodes, {a.rounds} rounds, batch {a.batch_size}, partition "
          f"{'paper-4' if paper else partition}, topology {'paper graph' if paper else topology}, "
          f"λ {a.group_lasso}, τ {a.drop_threshold}, seed {a.seed}", flush=True)
    base = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="bench-structured-"))
    results: list[dict[str, Any]] = []
    for model in a.models.split(","):
        for route in a.routes.split(","):
            spec = dict(ROUTES[route])
            over: dict[str, Any] = {"batch_size": a.batch_size}
            if "group_lasso" in spec:
                lam = a.group_lasso if spec["group_lasso"] is None else spec["group_lasso"]
                over.update(group_lasso=lam, structured_group_lasso=lam,  # 0 means none, not the preset's
                            drop_threshold=a.drop_threshold, structured_drop_threshold=a.drop_threshold)
            if "drop_until" in spec:
                over["drop_until"] = spec["drop_until"]
            keep = spec.get("keep")
            if model == "mcu-cnn" and spec["granularity"] != "unstructured":
                keep = 0.5  # mcu-cnn fits every profile whole: compare at channel fraction 0.5
            run = base / f"{model}-{route}"
            opts = FleetOptions(nodes=a.nodes, topology=topology, dataset="fashion-mnist", partition=partition,
                                profiles=tuple(a.profiles.split(",")), model=model, keep=keep,
                                granularity=spec["granularity"], rounds=a.rounds, eval_every=max(1, a.rounds // 4),
                                out=str(run), overrides=over, seed=a.seed)
            t0 = time.perf_counter()
            simulate(opts, dataset=ds, write_plots=False, workers=a.workers)
            sim_s = time.perf_counter() - t0
            per_node = []
            for i in range(a.nodes):
                summary_acc = json.loads((run / f"node-{i}" / "metrics.jsonl").read_text().splitlines()[-1])["acc"]
                fig = node_figures(run, i, a.export)
                fig["accuracy"] = summary_acc
                if not a.no_dense:
                    fig["dense_narrow"] = dense_narrow_accuracy(fig["shrunk"], run, i, a.rounds, a.batch_size, seed=i)
                del fig["shrunk"], fig["shape"]
                per_node.append(fig)
            by_profile: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for f in per_node:
                by_profile[f["profile"]].append(f)
            print(f"\n## {model} · {route} ({sim_s:.0f} s)")
            print(f"{'profile':<15}{'acc':>7}{'dense':>7}{'params':>9}{'MACs':>9}{'bytes':>9}{'lat ms':>9}"
                  f"{'MAC/plan':>9}{'fit':>6}")
            for prof, fs in by_profile.items():
                mean = lambda k: statistics.fmean(f[k] for f in fs)  # noqa: E731
                dense = f"{100 * mean('dense_narrow'):.1f}" if not a.no_dense else "-"
                ratio = ("-" if any(f["plan_macs"] in (None, 0) for f in fs) else
                         f"{max(f['macs'] / f['plan_macs'] for f in fs):.2f}")
                print(f"{prof:<15}{100 * mean('accuracy'):>7.1f}{dense:>7}{mean('params'):>9.0f}{mean('macs'):>9.3g}"
                      f"{mean('bytes'):>9.0f}{mean('latency_ms'):>9.4g}{ratio:>9}"
                      f"{sum(f['fits'] for f in fs):>3}/{len(fs)}")
            accs = [f["accuracy"] for f in per_node]
            print(f"{'all':<15}{100 * statistics.fmean(accs):>7.1f}"
                  + (f"{100 * statistics.fmean(f['dense_narrow'] for f in per_node):>7.1f}" if not a.no_dense else "")
                  + f"   fit {sum(f['fits'] for f in per_node)}/{len(per_node)}", flush=True)
            results.append({"model": model, "route": route, "seconds": sim_s, "nodes": per_node})
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
