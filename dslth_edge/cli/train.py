"""``dslth-edge train``: one device's run, alone or as a fleet node."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dslth_edge.cli.console import console, err_console, graceful_sigint

__all__ = ["train"]


@click.command()
@click.option("--profile", "profile", required=True, help="Hardware profile: a built-in name (see `profiles list`) or a path to a TOML file.")
@click.option("--dataset", default="fashion-mnist", show_default=True, type=click.Choice(["fashion-mnist", "cifar10", "synthetic"]), help="Training data.")
@click.option("--data-dir", default=None, help="Dataset directory (fashion-mnist default: /usr/share/datasets/fashion-mnist).")
@click.option("--model", default="paper-cnn", show_default=True, type=click.Choice(["paper-cnn", "mcu-cnn", "resnet-8"]), help="Model from the zoo.")
@click.option("--rounds", default=200, show_default=True, type=int, help="Rounds (one local mini-batch step each).")
@click.option("--keep", default=None, type=float, help="Fraction of weights each layer keeps; default: the profile's plan.")
@click.option("--granularity", default="unstructured", show_default=True, type=click.Choice(["unstructured", "channel"]), help="Mask granularity.")
@click.option("--out", default=None, help="Run directory (default runs/<profile>-<dataset>-<time>).")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where its last checkpoint left it.")
@click.option("--seed", default=0, show_default=True, type=int, help="The node's seed (scores, batch order).")
@click.option("--weight-seed", default=0, show_default=True, type=int, help="Seed of the fleet's fixed weights.")
@click.option("--weights", "weights_file", default=None, help="Load fixed weights from an .npz instead of the seed.")
@click.option("--preset", default="default", show_default=True, type=click.Choice(["default", "reference"]), help="Algorithm constants.")
@click.option("--batch-size", default=None, type=int, help="Mini-batch size (preset's by default).")
@click.option("--lr", default=None, type=float, help="Learning rate on the scores (preset's by default).")
@click.option("--group-lasso", default=None, type=float, help="Group-lasso weight λ over output channels.")
@click.option("--eval-every", default=25, show_default=True, type=int, help="Evaluate every N rounds.")
@click.option("--checkpoint-every", default=25, show_default=True, type=int, help="Checkpoint every N rounds.")
@click.option("--json", "as_json", is_flag=True, help="Print the final result as JSON (no progress bar).")
@click.option("--fleet", default=None, help="Fleet name: gossip with the fleet's other nodes over MQTT (see docs/mqtt.md).")
@click.option("--id", "node_id", default=None, type=int, help="[fleet] This device's node id, 0..N-1.")
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True, help="[fleet] Broker URL, mqtt:// or mqtts://.")
@click.option("--nodes", default=None, type=int, help="[fleet] Number of nodes N (the same on every device).")
@click.option("--topology", default="ring", show_default=True, help="[fleet] ring | torus | kregular:K | er:P | full | star | adjacency file.")
@click.option("--partition", default="iid", show_default=True, help="[fleet] iid | classes:K | dirichlet:A | file:PATH.")
@click.option("--partition-file", default=None, help="[fleet] A (nodes x classes) count matrix.")
@click.option("--scarce", default=None, type=int, help="[fleet] At most N training samples per node.")
@click.option("--test-size", default=None, type=int, help="[fleet] Test samples per node.")
@click.option("--round-deadline", default="auto", show_default=True, help="[fleet] Seconds to wait for neighbours' masks, or 'auto' (adaptive).")
@click.option("--deadline-max", default=60.0, show_default=True, type=float, help="[fleet] Upper bound of the adaptive deadline (s).")
@click.option("--stale-after", default=3, show_default=True, type=int, help="[fleet] Rounds of silence before a neighbour leaves the average.")
@click.option("--start-timeout", default=120.0, show_default=True, type=float, help="[fleet] Wait this long for neighbours before round 0.")
@click.option("--ca", "ca_file", default=None, help="[fleet] CA certificate for mqtts://.")
@click.option("--cert", "cert_file", default=None, help="[fleet] Client certificate (mqtts://).")
@click.option("--key", "key_file", default=None, help="[fleet] Client private key (mqtts://).")
@click.option("--tls-insecure", "insecure", is_flag=True, help="[fleet] Skip the broker host-name check (test set-ups only).")
@click.option("--username", default=None, help="[fleet] MQTT user (default $DSLTH_MQTT_USERNAME).")
@click.option("--password-file", default=None, help="[fleet] File holding the MQTT password (default $DSLTH_MQTT_PASSWORD).")
@click.option("--fleet-key-file", default=None, help="[fleet] File holding the fleet's HMAC key for frames (default $DSLTH_FLEET_KEY).")
@click.option("--mqtt-protocol", default="auto", show_default=True, type=click.Choice(["auto", "5", "3.1.1"]), help="[fleet] MQTT version.")
def train(as_json: bool, **kw: Any) -> None:
    """Train this device's mask (alone, or with --fleet options, in a fleet).

    \b
    Example:
      dslth-edge train --profile jetson-nano --dataset fashion-mnist --rounds 200
      dslth-edge train --profile raspberry-pi-4 --fleet lab --id 3 --nodes 8 \\
        --broker mqtt://10.0.0.2 --topology ring --partition classes:2
    """
    from dslth_edge.fleet.solo import TrainOptions, train as run_train

    fleet = _fleet_train_options(kw)
    opts = TrainOptions(**kw)
    stop = graceful_sigint()
    progress = Progress(
        TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, disable=as_json,
    )
    task = None
    figures = {"acc": "-", "loss": "-"}

    def on_start(node: Any, res: Any) -> None:
        nonlocal task
        if not as_json:
            err_console.print(
                f"node dir [bold]{res.node_dir}[/]  keep [bold]{res.keep:.3f}[/] ({res.keep_source})  "
                f"weights {node.fingerprint.hex()[:16]}…  train {len(node.split.train_indices)} / test {len(node.split.test_indices)}"
            )
        task = progress.add_task("train", total=opts.rounds, completed=node.round, status="")

    def on_round(r: Any) -> None:
        figures["loss"] = f"{r.loss:.3f}"
        if r.acc is not None:
            figures["acc"] = f"{100 * r.acc:.2f}%"
        progress.update(task, completed=r.round + 1, status=f"loss {figures['loss']}  acc {figures['acc']}")

    with progress:
        res = run_train(opts, on_start=on_start, on_round=on_round, stop_requested=stop, fleet=fleet)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
        return
    acc = f"{100 * res.accuracy:.2f}%" if res.accuracy is not None else "n/a"
    if res.stopped:
        console.print(f"stopped at round {res.rounds_done}/{res.rounds}; resume with: dslth-edge train ... --out {res.run_dir} --resume")
    else:
        console.print(f"done: {res.rounds_done} rounds in {res.seconds:.1f} s, test accuracy [bold]{acc}[/] at keep {res.keep:.3f}; mask in {res.node_dir}/mask.npz")


_FLEET_TRAIN_KEYS = ("fleet", "node_id", "broker", "nodes", "topology", "partition", "partition_file", "scarce",
                     "test_size", "round_deadline", "deadline_max", "stale_after", "start_timeout", "ca_file",
                     "cert_file", "key_file", "insecure", "username", "password_file", "fleet_key_file", "mqtt_protocol")


def _fleet_train_options(kw: dict[str, Any]) -> Any:
    """Pop the [fleet] options out of ``kw``; a FleetTrainOptions when --fleet is given, else None."""
    from dslth_edge.errors import UsageError
    from dslth_edge.fleet.solo import FleetTrainOptions

    f = {k: kw.pop(k) for k in _FLEET_TRAIN_KEYS}
    if f["fleet"] is None:
        return None
    if f["node_id"] is None or f["nodes"] is None:
        raise UsageError("--fleet needs --id I and --nodes N (the same N, topology and partition on every device)")
    deadline = f.pop("round_deadline")
    try:
        f["round_deadline_s"] = None if deadline == "auto" else float(deadline)
    except ValueError:
        raise UsageError(f"--round-deadline must be seconds or 'auto', got {deadline!r}") from None
    f["deadline_max_s"] = f.pop("deadline_max")
    f["start_timeout_s"] = f.pop("start_timeout")
    return FleetTrainOptions(**f)
