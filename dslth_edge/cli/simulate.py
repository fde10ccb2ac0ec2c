"""``dslth-edge simulate``: a whole fleet, lock-step, in one process (or a few workers).

Its options are the node's shared set (:mod:`dslth_edge.cli.options`), the fleet shape,
and the simulator's own (profiles, workers, plots).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from dslth_edge.cli.console import graceful_sigint
from dslth_edge.cli.options import FLEET_SHAPE, NODE, OUTPUT, algorithm_overrides, apply, pick
from dslth_edge.cli.progress import RoundReporter, setup_logging

__all__ = ["simulate", "SIMULATE_DEFAULTS", "fleet_options_from", "gateway_nodes"]

#: simulate's and fleet run's own defaults for shared options
SIMULATE_DEFAULTS = {"rounds": None, "eval_every": 10, "checkpoint_every": 10, "weight_seed": None}


def fleet_options_from(kw: dict[str, Any], profiles: str) -> Any:
    """A FleetOptions from the parsed shared options (removed from ``kw``)."""
    from dslth_edge.fleet.plan import FleetOptions

    overrides = algorithm_overrides(kw)
    kw["algorithm"] = kw.get("algorithm") or "mce-pl"
    return FleetOptions(profiles=tuple(p.strip() for p in profiles.split(",") if p.strip()), overrides=overrides,
                        **pick(kw, FleetOptions))


def gateway_nodes(profiles: list[str]) -> list[int]:
    """Nodes whose profile cannot train (the host trains them on the device's behalf)."""
    from dslth_edge.device.profiles import load_profile

    cache: dict[str, bool] = {}
    for name in profiles:
        if name not in cache:
            cache[name] = load_profile(name).can_train
    return [i for i, name in enumerate(profiles) if not cache[name]]


@click.command()
@apply(FLEET_SHAPE, NODE, defaults=SIMULATE_DEFAULTS, skip=("for_device",))
@click.option("--profiles", default="jetson-nano", show_default=True, help="Comma-separated profiles, assigned round-robin.")
@click.option("--profile-map", default=None, help="File mapping nodes to profiles: lines 'node_id profile' or JSON.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Processes the nodes are spread over (the masks are the same for any number).")
@click.option("--threads", default=None, type=int, help="torch threads (default: torch's; 1 is fastest on a busy shared machine).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@apply(OUTPUT)
def simulate(as_json: bool, no_plots: bool, threads: Any, workers: int, profiles: str, log_every: int | None,
             log_format: str, **kw: Any) -> None:
    """Simulate a fleet: N nodes, the same Node code as on devices, lock-step.

    Nodes of profiles that cannot train (MCUs) are trained here on their behalf; their
    config.json says so.

    \b
    Example:
      dslth-edge simulate --nodes 20 --topology ../shared/paper/adjacency_20.txt \\
        --partition-file ../shared/paper/train_counts_4.txt \\
        --profiles jetson-nano,raspberry-pi-4,esp32-s3 --algorithm mce-pl --rounds 100
    """
    setup_logging(log_format)
    import torch

    from dslth_edge.errors import CheckpointError
    from dslth_edge.fleet.simulator import resume_round, simulate as run_simulate
    from dslth_edge.runs.guard import clear_run_dir, run_mode

    if threads:
        torch.set_num_threads(threads)
    mode = run_mode(kw.pop("resume"), kw.pop("resume_or_start"), kw.pop("overwrite"))
    checkpoint_every = kw.pop("checkpoint_every")
    opts = fleet_options_from(kw, profiles)
    if kw:
        raise TypeError(f"simulate: options without a destination: {sorted(kw)}")
    if mode != "fresh" and not opts.out:
        raise CheckpointError(f"--{mode} needs --out: the run directory")
    if mode == "resume" and resume_round(opts.out) == 0:
        raise CheckpointError(f"nothing to resume in {opts.out}: no checkpoint; start without --resume, "
                              "or use --resume-or-start")
    if mode == "overwrite" or (mode == "resume-or-start" and resume_round(opts.out) == 0):
        clear_run_dir(Path(opts.out))  # resume-or-start with no checkpoint yet: what a killed start left goes
        mode = "fresh"
    report = RoundReporter("simulate", opts.rounds, every=log_every, fmt=log_format, disabled=as_json)

    def on_start(plan: Any, run_dir: Any) -> None:
        keeps = sorted(set(plan.keeps))
        gateway = gateway_nodes(plan.profiles)
        note = f"  nodes {gateway[:10]} trained here for devices that cannot train" if gateway else ""
        report.info(f"run dir {run_dir}  {opts.nodes} nodes  {plan.algorithm.name} ({plan.algorithm.preset})  "
                    f"topology {plan.topology.name}  keep ratios {', '.join(f'{k:.2f}' for k in keeps)}{note}",
                    run_dir=str(run_dir), nodes=opts.nodes, algorithm=plan.algorithm.name, keeps=keeps, gateway=gateway)

    def on_round(k: int, results: list[Any]) -> None:
        accs = [r.acc for r in results if r.acc is not None]
        loss = sum(r.loss for r in results) / len(results)
        heard = sum(r.neighbours_heard for r in results)
        report.round(k + 1, loss=loss, acc=sum(accs) / len(accs) if accs else None,
                     bytes_sent=sum(r.bytes_sent for r in results), heard=heard)

    stop = graceful_sigint()
    with report:
        summary = run_simulate(opts, on_start=on_start, on_round=on_round, write_plots=not no_plots, workers=workers,
                               worker_threads=threads or 1, resume=mode in ("resume", "resume-or-start"),
                               checkpoint_every=checkpoint_every, stop_requested=stop)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    f = summary["final"]
    click.echo(f"done: {summary['rounds']} rounds in {summary['seconds']:.1f} s; personalized accuracy "
               f"{100 * f['acc_mean']:.2f} ± {100 * f['acc_std']:.2f} % (min {100 * f['acc_min']:.2f}, max {100 * f['acc_max']:.2f}); "
               f"{f['bytes_per_round'] / 1e3:.1f} kB per round encoded ({f['bytes_reference_per_round'] / 1e3:.1f} kB reference metric); "
               f"summary in {summary['run_dir']}/summary.md")
