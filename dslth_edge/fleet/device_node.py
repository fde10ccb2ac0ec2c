"""One fleet node over MQTT: the device's own process (``train --fleet``) or one of a
``fleet run`` worker's threads.

The node is built exactly as the simulator builds it (:func:`dslth_edge.fleet.plan_fleet`
and :func:`~dslth_edge.fleet.make_node`), so node ``i`` gets the same NodeConfig, data
split, keep ratio and fixed weights in both; only the transport differs. Before round 0
it waits (bounded) for its neighbours' hello; then it runs the Node's round loop with a
round deadline (fixed or adaptive), telling the exchange to send a key frame whenever a
neighbour comes back online.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dslth_edge.fleet.deadline import AdaptiveDeadline, FixedDeadline, StartupDeadline
from dslth_edge.errors import UsageError
from dslth_edge.fleet.node import Node, RoundResult
from dslth_edge.transport.mqtt import Hello, MqttOptions, MqttTransport, read_secret
from dslth_edge.wire import CODEC_NAMES, default_max_frame_bytes

if TYPE_CHECKING:
    from dslth_edge.fleet.plan import FleetPlan

__all__ = ["ENV_FLEET_KEY", "NodeRunOptions", "fleet_key", "run_fleet_node"]

ENV_FLEET_KEY = "DSLTH_FLEET_KEY"


@dataclass(frozen=True)
class NodeRunOptions:
    """How a node runs on the network (everything that is not the fleet's plan)."""

    mqtt: MqttOptions = MqttOptions()
    round_deadline_s: float | None = None  # None: adaptive, at most deadline_max_s
    deadline_max_s: float = 60.0
    stale_after: int = 3
    start_timeout_s: float = 120.0  # wait this long for neighbours' hello before round 0
    checkpoint_every: int = 10
    resume: bool = False
    fleet_key_file: str | None = None  # HMAC key for frames; else $DSLTH_FLEET_KEY; else CRC only
    torch_threads: int | None = 1  # the same in every process: bit-identical to the simulator


def fleet_key(key_file: str | None) -> bytes | None:
    """The fleet's HMAC key from a file, else ``$DSLTH_FLEET_KEY``; None means CRC-32C frames."""
    secret = read_secret(env=ENV_FLEET_KEY, file=key_file)
    if secret is None:
        return None
    if not secret:
        raise UsageError("the fleet key is empty")
    return secret.encode()


def run_fleet_node(
    plan: "FleetPlan",
    node_id: int,
    run_dir: str | Path,
    opts: NodeRunOptions,
    *,
    on_start: Callable[[Node], None] | None = None,
    on_round: Callable[[RoundResult], None] | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> Node:
    """Run node ``node_id`` of ``plan`` to the last round over MQTT; returns the node.

    Raises :class:`~dslth_edge.errors.TransportError` when the broker cannot be reached
    or refuses the credentials, :class:`~dslth_edge.errors.CheckpointError` on a bad resume.
    """
    from dslth_edge.fleet.plan import make_node

    if not 0 <= node_id < plan.options.nodes:
        raise UsageError(f"--id {node_id} is outside the fleet's nodes 0..{plan.options.nodes - 1}")
    if opts.torch_threads:
        import torch

        torch.set_num_threads(opts.torch_threads)
    node = make_node(plan, node_id, None, run_dir)
    node.config = replace(node.config, stale_after=opts.stale_after, checkpoint_every=max(1, opts.checkpoint_every),
                          round_deadline_s=opts.round_deadline_s or opts.deadline_max_s)
    exchange: Any = node.exchange
    if hasattr(exchange, "neighbours"):  # take a returning (stale) neighbour's frames again
        exchange.neighbours = set(node.neighbours)
    key = fleet_key(opts.fleet_key_file)
    if key is not None:
        if not hasattr(exchange, "key"):
            raise UsageError(f"algorithm {plan.algorithm.name} sends dense weights, which carry no HMAC")
        exchange.key = key
    resume = opts.resume and node.paths is not None and node.paths.checkpoint.exists()
    node.start(resume=resume)
    shapes = getattr(exchange, "shapes", None)
    hello = Hello(node=node_id, fleet=plan.options.fleet_id, fingerprint=node.fingerprint.hex(),
                  profile=node.config.profile, keep=tuple(float(layer.keep) for layer in node.layers),
                  codecs=tuple(CODEC_NAMES), extra={"round": node.round, "pid": os.getpid()})
    max_frame = default_max_frame_bytes(shapes) if shapes else 4 * node.num_params + 4096
    transport = MqttTransport(opts.mqtt, fleet=plan.options.fleet_id, node_id=node_id, neighbours=node.neighbours,
                              hello=hello, max_frame_bytes=max_frame, fresh=not resume)
    transport.connect()
    node.transport = transport
    try:
        if resume:
            exchange.reconnected()  # our old deltas' bases are gone from the neighbours' stores
        policy = (AdaptiveDeadline(max_s=opts.deadline_max_s) if opts.round_deadline_s is None
                  else FixedDeadline(opts.round_deadline_s))
        missing = transport.wait_for_peers(opts.start_timeout_s)
        # every neighbour is up, but on a fresh start each begins round 0 only once *its*
        # neighbours are (up to start_timeout_s): round 0 waits for that, not one deadline.
        # A resumed node's neighbours are normally mid-run already: no such wait.
        first_s = opts.start_timeout_s if node.round == 0 and not missing else 0.0
        node.deadline_policy = StartupDeadline(policy, first_s)
        if on_start is not None:
            on_start(node)
        while node.round < node.config.rounds:
            if transport.take_returned() and hasattr(exchange, "encoder"):
                exchange.encoder.request_key(None)  # a returning neighbour holds none of our bases
            result = node.run_round()
            if on_round is not None:
                on_round(result)
            if stop_requested() and node.round < node.config.rounds:
                node.save()
                break
    finally:
        transport.close()
    return node
