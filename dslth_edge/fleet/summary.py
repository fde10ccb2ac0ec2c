"""The fleet summary: per-round figures, per-node finals, bytes; JSON and markdown.

``summary.json`` (machine-readable) and ``summary.md`` (a table for people) go into the
run directory next to the node directories; plots come from :mod:`dslth_edge.fleet.plots`.
Bytes are counted twice: as actually encoded (real frames through the exchange) and
with the authors' metric (1 bit per weight, or 32 for dense weights, x neighbours).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dslth_edge.runs.rundir import atomic_write_bytes, write_json

if TYPE_CHECKING:
    from dslth_edge.fleet.plan import FleetPlan
    from dslth_edge.fleet.node import Node

__all__ = ["build_summary", "write_summary", "per_round_table", "bytes_to_reach", "render_markdown", "security_record",
           "transport_drops"]


def security_record(identity: Any, mqtt: Any) -> dict[str, Any]:
    """How a fleet node is secured, for config.json, summary.json and ``--json`` output:
    the payload seal (``ed25519``/``hmac``/``crc``) and its run epoch, and how the broker
    is reached (TLS, password or client certificate). ``identity`` is a
    :class:`~dslth_edge.transport.identity.Identity`, ``mqtt`` the node's
    :class:`~dslth_edge.transport.mqtt_options.MqttOptions`; no secret is recorded."""
    addr = mqtt.address()
    user, password = mqtt.credentials()
    return {"mode": identity.mode, "run_epoch": identity.epoch, "broker_tls": bool(addr.tls),
            "broker_password": password is not None, "broker_user": user,
            "client_certificate": bool(mqtt.cert_file), "ca_file": mqtt.ca_file,
            "tls_insecure": bool(mqtt.insecure) if addr.tls else None}


def transport_drops(run_dir: Path, nodes: int) -> dict[str, Any]:
    """Inputs each node's transport dropped, per cause (from ``node-<i>/transport.json``,
    written by MQTT nodes), and the fleet's totals; empty for an in-process simulation."""
    import json

    per_node: dict[str, dict[str, int]] = {}
    total: dict[str, int] = {}
    for i in range(nodes):
        path = Path(run_dir) / f"node-{i}" / "transport.json"
        try:
            dropped = json.loads(path.read_text()).get("dropped", {})
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(dropped, dict):
            continue
        counts = {str(k): int(v) for k, v in dropped.items() if isinstance(v, int) and not isinstance(v, bool)}
        per_node[str(i)] = counts
        for cause, n in counts.items():
            total[cause] = total.get(cause, 0) + n
    return {"total": dict(sorted(total.items())), "per_node": per_node} if per_node else {}


def per_round_table(history: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per round: accuracy spread (eval rounds), loss, bytes (this round and cumulative)."""
    rows, cum, cum_ref = [], 0, 0
    for k, results in enumerate(history):
        sent = sum(r["bytes_sent"] for r in results)
        ref = sum(r["bytes_reference"] for r in results)
        cum += sent
        cum_ref += ref
        accs = [r["acc"] for r in results if r["acc"] is not None and not math.isnan(r["acc"])]
        row: dict[str, Any] = {"round": k, "loss_mean": statistics.fmean(r["loss"] for r in results),
                               "bytes_sent": sent, "bytes_cum": cum, "bytes_reference": ref, "bytes_reference_cum": cum_ref}
        if accs:
            row.update(acc_mean=statistics.fmean(accs), acc_min=min(accs), acc_max=max(accs))
        rows.append(row)
    return rows


def bytes_to_reach(rows: list[dict[str, Any]], target: float, key: str = "bytes_cum") -> int | None:
    """Cumulative bytes (all nodes) at the first evaluated round whose mean accuracy >= target."""
    for row in rows:
        if row.get("acc_mean") is not None and row["acc_mean"] >= target:
            return int(row[key])
    return None


def _measured(acc: float | None) -> float | None:
    """An accuracy, or None where there is none (no test samples: the node's metrics say NaN)."""
    return None if acc is None or math.isnan(acc) else float(acc)


def build_summary(plan: "FleetPlan", nodes: list["Node"], history: list[list[dict[str, Any]]],
                  run_dir: Path, *, seconds: float) -> dict[str, Any]:
    """Everything a reader needs about a finished simulation."""
    rows = per_round_table(history)
    last = history[-1]
    per_node = []
    for i, node in enumerate(nodes):
        sent = sum(h[i]["bytes_sent"] for h in history)
        per_node.append({
            "node": i, "profile": plan.profiles[i], "keep": plan.keeps[i], "keep_actual": last[i]["keep_actual"],
            "degree": len(node.neighbours), "classes": list(node.split.classes), "train": node.split.num_train,
            "test": node.split.num_test, "final_acc": _measured(last[i]["acc"]), "bytes_sent": sent,
        })
    # a node without test samples has no accuracy (NaN in its metrics): left out, and counted
    accs = [n["final_acc"] for n in per_node if n["final_acc"] is not None]
    n_rounds = len(history)
    total = rows[-1]["bytes_cum"]
    total_ref = rows[-1]["bytes_reference_cum"]
    o = plan.options
    return {
        "run_dir": str(run_dir),
        "options": {k: v for k, v in asdict(o).items()},
        "algorithm": plan.algorithm.to_dict(),
        "topology": plan.topology.describe(),
        "rounds": n_rounds,
        "seconds": seconds,
        "seconds_per_round": seconds / max(n_rounds, 1),
        "final": {
            "acc_mean": statistics.fmean(accs) if accs else None,
            "acc_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
            "acc_min": min(accs) if accs else None,
            "acc_max": max(accs) if accs else None,
            "nodes_without_accuracy": len(per_node) - len(accs),
            "bytes_total": total,
            "bytes_reference_total": total_ref,
            "bytes_per_round": total / max(n_rounds, 1),
            "bytes_reference_per_round": total_ref / max(n_rounds, 1),
            "bytes_per_node_round": total / max(n_rounds * len(nodes), 1),
        },
        "nodes": per_node,
        "per_round": rows,
        **({"transport_dropped": drops} if (drops := transport_drops(run_dir, len(nodes))) else {}),
    }


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def render_markdown(summary: dict[str, Any]) -> str:
    """summary.md: headline figures, per-node table, accuracy by round."""
    o, f, a = summary["options"], summary["final"], summary["algorithm"]
    lines = [
        f"# Fleet simulation: {a['name']} ({a['preset']} preset)", "",
        f"{o['nodes']} nodes, topology `{o['topology']}`, dataset {o['dataset']}, partition `{o['partition_file'] or o['partition']}`"
        + (f", scarce {o['scarce']}" if o["scarce"] else "") + f", model {o['model']}, {summary['rounds']} rounds, seed {o['seed']}.", "",
        "| figure | value |", "| --- | --- |",
        f"| final personalized accuracy (mean ± std over nodes) | {_pct(f['acc_mean'])} ± {_pct(f['acc_std'])} % |",
        f"| min / max node accuracy | {_pct(f['acc_min'])} / {_pct(f['acc_max'])} % |",
        f"| bytes sent, encoded (all nodes) | {_fmt_bytes(f['bytes_total'])} ({_fmt_bytes(f['bytes_per_round'])} per round) |",
        f"| bytes, reference metric (all nodes) | {_fmt_bytes(f['bytes_reference_total'])} ({_fmt_bytes(f['bytes_reference_per_round'])} per round) |",
        f"| wall time | {summary['seconds']:.1f} s ({summary['seconds_per_round']:.2f} s per round) |", "",
        "## Nodes", "", "| node | profile | keep | kept | degree | classes | train | final acc % | bytes sent |",
        "| ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for n in summary["nodes"]:
        lines.append(f"| {n['node']} | {n['profile']} | {n['keep']:.3f} | {n['keep_actual']:.3f} | {n['degree']} | "
                     f"{','.join(map(str, n['classes']))} | {n['train']} | {_pct(n['final_acc'])} | {_fmt_bytes(n['bytes_sent'])} |")
    lines += ["", "## Accuracy by round (evaluated rounds)", "", "| round | mean % | min % | max % | cumulative bytes |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for r in summary["per_round"]:
        if "acc_mean" in r:
            lines.append(f"| {r['round'] + 1} | {_pct(r['acc_mean'])} | {_pct(r['acc_min'])} | {_pct(r['acc_max'])} | {_fmt_bytes(r['bytes_cum'])} |")
    return "\n".join(lines) + "\n"


def write_summary(summary: dict[str, Any], run_dir: Path, history: list[list[dict[str, Any]]], *, write_plots: bool = True) -> None:
    """summary.json, summary.md and (with matplotlib) the PNG plots, atomically."""
    write_json(run_dir / "summary.json", summary)
    atomic_write_bytes(run_dir / "summary.md", render_markdown(summary).encode())
    if write_plots:
        from dslth_edge.fleet.plots import plot_fleet

        summary["plots"] = plot_fleet(summary, run_dir)
        write_json(run_dir / "summary.json", summary)
