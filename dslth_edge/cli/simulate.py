"""``dslth-edge simulate``: a whole fleet in one process over an in-memory transport."""

from __future__ import annotations

import json
from typing import Any

import click

from dslth_edge.learn.algorithm import ALGORITHMS, PRESETS

__all__ = ["simulate"]


@click.command()
@click.option("--nodes", default=20, show_default=True, type=int, help="Number of nodes.")
@click.option("--topology", default="ring", show_default=True,
              help="ring | torus | kregular:K | er:P | full | star | an adjacency file (e.g. ../shared/paper/adjacency_20.txt).")
@click.option("--dataset", default="fashion-mnist", show_default=True, type=click.Choice(["fashion-mnist", "cifar10", "synthetic"]))
@click.option("--data-dir", default=None, help="Dataset directory.")
@click.option("--partition", default="iid", show_default=True, help="iid | classes:K | dirichlet:A | file:PATH.")
@click.option("--partition-file", default=None, help="A (nodes x classes) count matrix, e.g. ../shared/paper/train_counts_4.txt.")
@click.option("--scarce", default=None, type=int, help="At most N training samples per node.")
@click.option("--test-size", default=None, type=int, help="Test samples per node (default: a disjoint share of the test set).")
@click.option("--profiles", default="jetson-nano", show_default=True, help="Comma-separated profiles, assigned round-robin.")
@click.option("--profile-map", default=None, help="File mapping nodes to profiles: lines 'node_id profile' or JSON.")
@click.option("--algorithm", default="mce-pl", show_default=True, type=click.Choice(list(ALGORITHMS)))
@click.option("--preset", default="default", show_default=True, type=click.Choice(list(PRESETS)))
@click.option("--model", default="paper-cnn", show_default=True, type=click.Choice(["paper-cnn", "mcu-cnn", "resnet-8"]))
@click.option("--keep", default=None, type=float, help="Keep ratio for every node (default: each profile's plan).")
@click.option("--granularity", default="unstructured", show_default=True, type=click.Choice(["unstructured", "channel"]))
@click.option("--rounds", default=100, show_default=True, type=int)
@click.option("--eval-every", default=10, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int, help="Partition, scores and batch seed.")
@click.option("--weight-seed", default=None, type=int, help="Fixed-weight seed (default: --seed).")
@click.option("--lr", default=None, type=float, help="Override the preset's learning rate on the scores.")
@click.option("--batch-size", default=None, type=int, help="Override the preset's batch size.")
@click.option("--local-steps", default=None, type=int, help="Override the preset's local steps per round.")
@click.option("--ft-recompute", is_flag=True, default=None, help="(5) with a fresh gradient instead of the step's.")
@click.option("--drop-threshold", default=None, type=float, help="Structured option: drop channels keeping less than this fraction.")
@click.option("--out", default=None, help="Run directory (default runs/fleet-<algorithm>-<dataset>-<time>).")
@click.option("--threads", default=None, type=int, help="torch threads (default: torch's; 1 is fastest on a busy shared machine).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (no progress display).")
def simulate(as_json: bool, no_plots: bool, threads: Any, profiles: str, lr: Any, batch_size: Any, local_steps: Any,
             ft_recompute: Any, drop_threshold: Any, **kw: Any) -> None:
    """Simulate a fleet: N nodes, the same Node code as on devices, in one process.

    \b
    Example:
      dslth-edge simulate --nodes 20 --topology ../shared/paper/adjacency_20.txt \\
        --partition-file ../shared/paper/train_counts_4.txt \\
        --profiles jetson-nano,raspberry-pi-4,esp32-s3 --algorithm mce-pl --rounds 100
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    import torch

    from dslth_edge.fleet.plan import FleetOptions

    from dslth_edge.fleet.simulator import simulate as run_simulate

    if threads:
        torch.set_num_threads(threads)

    overrides = {"lr": lr, "batch_size": batch_size, "local_steps": local_steps, "ft_recompute": ft_recompute,
                 "drop_threshold": drop_threshold}
    opts = FleetOptions(profiles=tuple(p.strip() for p in profiles.split(",") if p.strip()),
                        overrides={k: v for k, v in overrides.items() if v is not None}, **kw)
    err = Console(stderr=True)
    progress = Progress(TextColumn("[bold]simulate[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err, disable=as_json)
    task = progress.add_task("simulate", total=opts.rounds, status="")
    state = {"acc": "-", "bytes": 0}

    def on_start(plan: Any, run_dir: Any) -> None:
        if not as_json:
            keeps = sorted(set(plan.keeps))
            err.print(f"run dir [bold]{run_dir}[/]  {opts.nodes} nodes  {plan.algorithm.name} ({plan.algorithm.preset})  "
                      f"topology {plan.topology.name}  keep ratios {', '.join(f'{k:.2f}' for k in keeps)}")

    def on_round(k: int, results: list[Any]) -> None:
        state["bytes"] += sum(r.bytes_sent for r in results)
        accs = [r.acc for r in results if r.acc is not None]
        if accs:
            state["acc"] = f"{100 * sum(accs) / len(accs):.2f}%"
        loss = sum(r.loss for r in results) / len(results)
        progress.update(task, completed=k + 1, status=f"loss {loss:.3f}  mean acc {state['acc']}  sent {state['bytes'] / 1e6:.2f} MB")

    with progress:
        summary = run_simulate(opts, on_start=on_start, on_round=on_round, write_plots=not no_plots)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    f = summary["final"]
    click.echo(f"done: {summary['rounds']} rounds in {summary['seconds']:.1f} s; personalized accuracy "
               f"{100 * f['acc_mean']:.2f} ± {100 * f['acc_std']:.2f} % (min {100 * f['acc_min']:.2f}, max {100 * f['acc_max']:.2f}); "
               f"{f['bytes_per_round'] / 1e3:.1f} kB per round encoded ({f['bytes_reference_per_round'] / 1e3:.1f} kB reference metric); "
               f"summary in {summary['run_dir']}/summary.md")
