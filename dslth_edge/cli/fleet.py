"""``dslth-edge broker`` and ``dslth-edge fleet run``: the fleet over a real MQTT broker.

``fleet run`` takes every option of ``simulate`` (the same click parameters, reused, so
the two cannot drift) plus the network's; it writes the same run directories, summary
and plots.
"""

from __future__ import annotations

import json
from typing import Any

import click

from dslth_edge.cli.simulate import simulate as _simulate_cmd

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


def _simulate_params() -> list[click.Parameter]:
    # every simulate option except its --json (redefined below with the same meaning)
    return [p for p in _simulate_cmd.params if p.name not in ("as_json",)]


@fleet.command("run", params=_simulate_params())
@click.option("--broker", "broker_url", default=None, help="Broker URL (default: start the embedded broker on a free loopback port).")
@click.option("--workers", default=None, type=int, help="Node processes (default: one per CPU core); each hosts N/W nodes.")
@click.option("--fleet-id", default="fleet", show_default=True, help="Fleet name in topics and frames.")
@click.option("--round-deadline", default="auto", show_default=True, help="Seconds to wait for neighbours' masks, or 'auto'.")
@click.option("--deadline-max", default=60.0, show_default=True, type=float, help="Upper bound of the adaptive deadline (s).")
@click.option("--stale-after", default=3, show_default=True, type=int, help="Rounds of silence before a neighbour leaves the average.")
@click.option("--checkpoint-every", default=10, show_default=True, type=int, help="Checkpoint every N rounds (resume after a crash).")
@click.option("--fleet-key-file", default=None, help="File holding the fleet's HMAC key (default $DSLTH_FLEET_KEY; none: CRC-32C).")
@click.option("--username", default=None, help="MQTT user (default $DSLTH_MQTT_USERNAME).")
@click.option("--password-file", default=None, help="File holding the MQTT password (default $DSLTH_MQTT_PASSWORD).")
@click.option("--ca", "ca_file", default=None, help="CA certificate for mqtts://.")
@click.option("--timeout", "timeout_s", default=None, type=float, help="Stop the fleet after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (no live table).")
def run(as_json: bool, no_plots: bool, profiles: str, lr: Any, batch_size: Any, local_steps: Any, ft_recompute: Any,
        drop_threshold: Any, broker_url: str | None, workers: int | None, round_deadline: str, deadline_max: float,
        stale_after: int, checkpoint_every: int, fleet_key_file: str | None, username: str | None,
        password_file: str | None, ca_file: str | None, timeout_s: float | None, **kw: Any) -> None:
    """Run a fleet as OS processes over MQTT; same options and outputs as `simulate`.

    \b
    Example (8 heterogeneous nodes on the embedded broker):
      dslth-edge fleet run --nodes 8 --profiles jetson-nano,raspberry-pi-4,esp32-s3 \\
        --partition classes:2 --model mcu-cnn --rounds 60
    """
    from dslth_edge.errors import UsageError
    from dslth_edge.fleet.plan import FleetOptions
    from dslth_edge.fleet.device_node import NodeRunOptions
    from dslth_edge.fleet.processes import FleetRunOptions, run_fleet
    from dslth_edge.fleet.live import LiveTable
    from dslth_edge.transport.mqtt import ENV_PASSWORD, MqttOptions, read_secret

    # simulate's --threads: torch threads per node (default 1: bit-identical to the simulator run with 1)
    torch_threads = kw.pop("threads", None) or 1
    overrides = {"lr": lr, "batch_size": batch_size, "local_steps": local_steps, "ft_recompute": ft_recompute,
                 "drop_threshold": drop_threshold}
    opts = FleetOptions(profiles=tuple(p.strip() for p in profiles.split(",") if p.strip()),
                        overrides={k: v for k, v in overrides.items() if v is not None}, **kw)
    try:
        deadline = None if round_deadline == "auto" else float(round_deadline)
    except ValueError:
        raise UsageError(f"--round-deadline must be seconds or 'auto', got {round_deadline!r}") from None
    mqtt = MqttOptions(username=username, password=read_secret(env=ENV_PASSWORD, file=password_file), ca_file=ca_file)
    run_opts = FleetRunOptions(
        node=NodeRunOptions(mqtt=mqtt, round_deadline_s=deadline, deadline_max_s=deadline_max, stale_after=stale_after,
                            checkpoint_every=checkpoint_every, fleet_key_file=fleet_key_file, torch_threads=torch_threads),
        broker_url=broker_url, workers=workers, timeout_s=timeout_s,
    )
    table = LiveTable(opts.nodes, opts.rounds, disabled=as_json)
    with table:
        summary = run_fleet(opts, run_opts, on_start=table.started, on_tick=table.update, write_plots=not no_plots)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    table.print_summary(summary)
