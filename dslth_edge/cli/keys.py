"""``dslth-edge keys``: per-node Ed25519 identities and the fleet roster."""

from __future__ import annotations

import click

from dslth_edge.cli.console import console

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """Per-node Ed25519 identities: key files and the fleet roster (docs/mqtt.md, Security)."""


@keys.command("init")
@click.option("--fleet", required=True, help="Fleet name (as in --fleet / --fleet-id).")
@click.option("--nodes", required=True, type=click.IntRange(min=1), help="Number of nodes: ids 0..N-1.")
@click.option("--out", default=None, help="Directory for roster.json and node-<i>.key (default keys/<fleet>).")
@click.option("--epoch", default=1, show_default=True, type=click.IntRange(min=0, max=2**64 - 1),
              help="Run epoch in the roster: frames of any other epoch are refused. Bump it to retire old runs.")
@click.option("--epoch-policy", default="per-run", show_default=True, type=click.Choice(["per-run", "fixed"]),
              help="per-run: every run is bound to fresh incarnations its nodes verify (recordings of earlier "
                   "runs are refused); fixed: --epoch alone, as before (earlier runs of the epoch can be replayed).")
@click.option("--force", is_flag=True, help="Replace existing keys and roster.")
def init(fleet: str, nodes: int, out: str | None, epoch: int, epoch_policy: str, force: bool) -> None:
    """Write one private key per node (mode 0600) and the roster (node id -> public key).

    \b
    Example:
      dslth-edge keys init --fleet lab --nodes 8
      dslth-edge train --fleet lab --id 3 --roster keys/lab/roster.json ...   # uses keys/lab/node-3.key
    Give each device only its own node-<i>.key and the roster.
    """
    from pathlib import Path

    from dslth_edge.transport.identity import generate_keys, roster_file
    from dslth_edge.transport.messages import check_fleet_name

    check_fleet_name(fleet)  # before it names a directory
    directory = Path(out) if out else Path("keys") / fleet
    generate_keys(fleet, nodes, directory, epoch=epoch, epoch_policy=epoch_policy, overwrite=force)
    console.print(f"wrote {roster_file(directory)} and {nodes} node keys (node-0.key … node-{nodes - 1}.key, mode 0600), "
                  f"run epoch {epoch} ({epoch_policy})", highlight=False)
