"""``dslth-edge train``: one device's run, alone or as a fleet node.

Its options are the node's shared set (:mod:`dslth_edge.cli.options`): the same
declaration ``simulate`` and ``fleet run`` use, plus ``--profile``, ``--weights`` and the
fleet identity (``--fleet NAME --id I``).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from dslth_edge.cli.console import console, graceful_sigint
from dslth_edge.cli.options import FLEET_SHAPE, NETWORK, NODE, OUTPUT, apply, option_names, parse_deadline, pick
from dslth_edge.cli.progress import RoundReporter, setup_logging
from dslth_edge.errors import EXIT_INTERRUPTED, UsageError

if TYPE_CHECKING:  # the fleet's modules load torch: not for --help
    from dslth_edge.fleet.solo import FleetTrainOptions

__all__ = ["train"]

_FLEET_FIELDS = ("fleet", "node_id", *option_names(FLEET_SHAPE, NETWORK))
_TRAIN_DEFAULTS = {"rounds": 200, "eval_every": 25, "checkpoint_every": 25, "nodes": None}


@click.command()
@click.option("--profile", "profile", required=True, help="Hardware profile: a built-in name (see `profiles list`) or a path to a TOML file.")
@click.option("--weights", "weights_file", default=None, help="Load fixed weights from an .npz instead of the seed.")
@click.option("--fleet", default=None, help="Fleet name: gossip with the fleet's other nodes over MQTT (see docs/mqtt.md).")
@click.option("--id", "node_id", default=None, type=int, help="[fleet] This device's node id, 0..N-1.")
@apply(NODE, defaults=_TRAIN_DEFAULTS)
@apply(FLEET_SHAPE, NETWORK, defaults=_TRAIN_DEFAULTS, prefix={f: "[fleet]" for f in option_names(FLEET_SHAPE, NETWORK)})
@apply(OUTPUT)
def train(as_json: bool, log_every: int | None, log_format: str, **kw: Any) -> None:
    """Train this device's mask (alone, or with --fleet options, in a fleet).

    \b
    Example:
      dslth-edge train --profile jetson-nano --dataset fashion-mnist --rounds 200
      dslth-edge train --profile raspberry-pi-4 --fleet lab --id 3 --nodes 8 \\
        --broker mqtt://10.0.0.2 --topology ring --partition classes:2

    Exit codes: 0 done, 2 bad input, 4 a fleet node that never heard a neighbour,
    5 network failure, 130 interrupted (docs/cli.md).
    """
    setup_logging(log_format)
    from dslth_edge.device.profiles import load_profile
    from dslth_edge.fleet.node import Node, RoundResult
    from dslth_edge.fleet.solo import TrainOptions, TrainResult, gateway_note, train as run_train

    fleet = _fleet_train_options(kw)
    opts = TrainOptions(**pick(kw, TrainOptions))
    if kw:
        raise TypeError(f"train: options without a destination: {sorted(kw)}")
    stop = graceful_sigint()
    report = RoundReporter("train", opts.rounds, every=log_every, fmt=log_format, disabled=as_json)
    neighbours: dict[str, int] = {"n": 0}

    def on_start(node: Node, res: TrainResult) -> None:
        neighbours["n"] = len(node.neighbours)
        trained_by = gateway_note(load_profile(res.for_device)) if res.for_device else None
        gateway = f"  [{trained_by}]" if trained_by else ""
        identity = node.exchange.identity if node.exchange is not None else None  # fleet nodes: the security mode, stated
        security = f"  security: {identity.describe()}" if identity is not None else ""
        micro = node.algo.micro_batch  # the device's training RAM splits each batch
        micro_note = f"  micro-batch {micro} of {node.algo.batch_size}" if micro else ""
        report.info(f"node dir {res.node_dir}  keep {res.keep:.3f} ({res.keep_source})  "
                    f"weights {node.fingerprint.hex()[:16]}…  train {len(node.split.train_indices)} / "
                    f"test {len(node.split.test_indices)}{micro_note}{gateway}{security}",
                    node_dir=res.node_dir, keep=res.keep, keep_source=res.keep_source, round=node.round,
                    trained_by=trained_by, micro_batch=micro)
        report.started(node.round)

    def on_round(r: RoundResult) -> None:
        heard = f"{r.neighbours_heard}/{neighbours['n']}" if fleet is not None else None
        report.round(r.round + 1, loss=r.loss, acc=r.acc, bytes_sent=r.bytes_sent, heard=heard)

    with report:
        res = run_train(opts, on_start=on_start, on_round=on_round, stop_requested=stop, fleet=fleet,
                        on_warning=logging.getLogger("dslth_edge.train").warning)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
    else:
        acc = f"{100 * res.accuracy:.2f}%" if res.accuracy is not None else "n/a"
        if res.stopped:
            report.info(f"stopped at round {res.rounds_done}/{res.rounds}; continue with: dslth-edge train ... "
                        f"--out {res.run_dir} --resume", **res.to_dict())
        elif log_format == "json":
            report.info("", **{"done": True, **res.to_dict()})
        else:
            gateway = f" (trained on this host for {res.for_device})" if res.for_device else ""
            console.print(f"done: {res.rounds_done} rounds in {res.seconds:.1f} s, test accuracy [bold]{acc}[/] at "
                          f"keep {res.keep:.3f}; mask in {res.node_dir}/mask.npz{gateway}", highlight=False, soft_wrap=True)
            if res.round_time:
                console.print(res.round_time, markup=False, highlight=False, soft_wrap=True)
    if res.stopped:
        sys.exit(EXIT_INTERRUPTED)


def _fleet_train_options(kw: dict[str, Any]) -> FleetTrainOptions | None:
    """Pop the [fleet] options out of ``kw``; a FleetTrainOptions when --fleet is given, else None."""
    from dslth_edge.fleet.solo import FleetTrainOptions

    f = {k: kw.pop(k) for k in (*_FLEET_FIELDS, "stale_after") if k in kw}  # alone, stale-after has no neighbours
    if f["fleet"] is None:
        return None
    if f["node_id"] is None or f["nodes"] is None:
        raise UsageError("--fleet needs --id I and --nodes N (the same N, topology and partition on every device)")
    f["round_deadline_s"] = parse_deadline(f.pop("round_deadline"))
    opts = FleetTrainOptions(**pick(f, FleetTrainOptions))
    if f:
        raise TypeError(f"train --fleet: options without a destination: {sorted(f)}")
    return opts
