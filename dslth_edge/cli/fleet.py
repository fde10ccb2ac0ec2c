"""``dslth-edge broker`` and ``dslth-edge fleet run``: the fleet over a real MQTT broker.

``fleet run`` takes the node's shared options (:mod:`dslth_edge.cli.options`: the same
declaration as ``train`` and ``simulate``, so they cannot drift), the fleet shape and the
network options; it writes the same run directories, summary and plots as ``simulate``.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import click

from dslth_edge.cli.options import FLEET_SHAPE, NETWORK, NODE, OUTPUT, SLICE, apply, parse_deadline, pick
from dslth_edge.cli.progress import setup_logging
from dslth_edge.cli.simulate import SIMULATE_DEFAULTS, fleet_options_from

__all__ = ["broker", "fleet"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=1883, show_default=True, type=int, help="TCP port.")
def broker(host: str, port: int) -> None:
    """Run the embedded MQTT broker (amqtt, MQTT 3.1.1) in the foreground; Ctrl-C stops it.

    For production fleets prefer Mosquitto with TLS, a password file and an ACL
    (docs/mqtt.md).
    """
    from dslth_edge.transport.broker import run_broker

    click.echo(f"embedded MQTT broker on mqtt://{host}:{port} (Ctrl-C to stop)", err=True)
    run_broker(host, port)


@click.group()
def fleet() -> None:
    """A fleet of node processes gossiping over MQTT."""


@fleet.command("run")
@apply(FLEET_SHAPE, NODE, NETWORK, defaults={**SIMULATE_DEFAULTS, "broker": None}, skip=("for_device",))
@click.option("--profiles", default="jetson-nano", show_default=True, help="Comma-separated profiles, assigned round-robin.")
@click.option("--profile-map", default=None, help="File mapping nodes to profiles: lines 'node_id profile' or JSON.")
@click.option("--fleet-id", default="fleet", show_default=True, help="Fleet name in topics and frames.")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Node processes (default: one per CPU core, more for fleets over 250 nodes per core); "
                   "each hosts N/W nodes, at most 250.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="torch threads per node (1: bit-identical to `simulate` with 1).")
@click.option("--timeout", "timeout_s", default=None, type=float, help="Stop the fleet after this many seconds.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@apply(SLICE)
@apply(OUTPUT)
def run(as_json: bool, no_plots: bool, profiles: str, workers: int | None, threads: int, timeout_s: float | None,
        broker: str | None, log_every: int | None, log_format: str, only: str | None, **kw: Any) -> None:
    """Run a fleet as OS processes over MQTT; same options and outputs as `simulate`.

    Without --broker it starts the embedded broker on a free loopback port.

    \b
    Example (8 heterogeneous nodes on the embedded broker):
      dslth-edge fleet run --nodes 8 --profiles jetson-nano,raspberry-pi-4,esp32-s3 \\
        --partition classes:2 --model mcu-cnn --rounds 60
    """
    setup_logging(log_format)
    from dslth_edge.fleet.device_node import NodeRunOptions
    from dslth_edge.fleet.plan import FleetOptions
    from dslth_edge.fleet.live import LiveTable
    from dslth_edge.fleet.processes import FleetRunOptions, run_fleet
    from dslth_edge.transport.mqtt_options import ENV_PASSWORD, MqttOptions, read_secret

    net = {"round_deadline_s": parse_deadline(kw.pop("round_deadline")), "mqtt_protocol": kw.pop("mqtt_protocol"),
           "password_file": kw.pop("password_file")}
    mqtt = MqttOptions(protocol=net["mqtt_protocol"], password=read_secret(env=ENV_PASSWORD, file=net["password_file"]),
                       **pick(kw, MqttOptions))
    node_kw = pick(kw, NodeRunOptions, pop=False)
    for k in set(node_kw) - {f.name for f in fields(FleetOptions)}:  # stale_after, checkpoint_every: both need them
        del kw[k]
    node_opts = NodeRunOptions(mqtt=mqtt, round_deadline_s=net["round_deadline_s"], torch_threads=threads, **node_kw)
    opts = fleet_options_from(kw, profiles)
    if kw:
        raise TypeError(f"fleet run: options without a destination: {sorted(kw)}")
    from dslth_edge.fleet.processes import parse_node_slice

    run_opts = FleetRunOptions(node=node_opts, broker_url=broker, workers=workers, timeout_s=timeout_s,
                               only=None if only is None else parse_node_slice(only, opts.nodes))
    table = LiveTable(opts.nodes, opts.rounds, disabled=as_json, every=log_every, fmt=log_format)
    with table:
        summary = run_fleet(opts, run_opts, on_start=table.started, on_tick=table.update, write_plots=not no_plots)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    if "slice" in summary:  # --only: this slice is done, other nodes are not (yet)
        click.echo(f"done: nodes {summary['slice']} finished {summary['rounds']} rounds in {summary['seconds']:.1f} s; "
                   f"the fleet's summary is written by the slice that finishes last (run dir {summary['run_dir']})")
        return
    table.print_summary(summary)


@fleet.command("watch")
@click.option("--broker", required=True, help="Broker URL, mqtt:// or mqtts://.")
@click.option("--fleet", "fleet_id", required=True, help="Fleet name (the nodes' --fleet / --fleet-id).")
@click.option("--once", is_flag=True, help="Print the fleet once and exit.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per node (with --once: one snapshot).")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.2),
              help="Seconds between refreshes.")
@click.option("--count", default=None, type=click.IntRange(min=1),
              help="Stop after this many refreshes (default: Ctrl-C).")
@click.option("--roster", default=None, help="Fleet roster: verify Ed25519-signed hellos and reports.")
@click.option("--fleet-key-file", default=None, help="Fleet HMAC key: verify HMAC-sealed hellos and reports "
              "(default $DSLTH_FLEET_KEY).")
@click.option("--ca", "ca_file", default=None, help="CA certificate for mqtts://.")
@click.option("--tls-insecure", "insecure", is_flag=True, help="Skip the broker host-name check (test set-ups only).")
@click.option("--username", default=None, help="MQTT user (default $DSLTH_MQTT_USERNAME).")
@click.option("--password-file", default=None, help="File holding the MQTT password (default $DSLTH_MQTT_PASSWORD).")
def watch(broker: str, fleet_id: str, once: bool, as_json: bool, interval: float, count: int | None, roster: str | None,
          fleet_key_file: str | None, ca_file: str | None, insecure: bool, username: str | None,
          password_file: str | None) -> None:
    """A live view of a whole fleet from its broker alone (no torch, no run directory).

    Per node: id, profile, online/offline, round, last accuracy, bytes sent, deadline
    misses, security mode; from the retained hello, status and progress report each node
    publishes. Reports are verified with --roster or --fleet-key-file; an unsigned,
    unverifiable or malformed one is shown as such and its figures are not used.

    \b
    Example:
      dslth-edge fleet watch --broker mqtt://broker.local --fleet lab --once --json
    """
    import sys

    from dslth_edge.errors import UsageError
    from dslth_edge.fleet.watch import FleetWatch, watch_lines
    from dslth_edge.transport.mqtt_options import ENV_FLEET_KEY, ENV_PASSWORD, MqttOptions, read_secret

    key = read_secret(env=ENV_FLEET_KEY, file=fleet_key_file)
    if key == "":
        raise UsageError("the fleet key is empty")
    mqtt = MqttOptions(url=broker, ca_file=ca_file, insecure=insecure, username=username,
                       password=read_secret(env=ENV_PASSWORD, file=password_file))
    with FleetWatch(mqtt, fleet_id, roster=roster, key=key.encode() if key else None) as fw:
        fw.settle()
        try:
            watch_lines(fw, sys.stdout, as_json=as_json, once=once, interval_s=interval, count=count,
                        broker=str(mqtt.address()))
        except KeyboardInterrupt:
            pass
