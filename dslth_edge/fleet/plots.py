"""PNG plots of a fleet simulation (matplotlib, headless; optional dependency)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_fleet"]


def plot_fleet(summary: dict[str, Any], run_dir: str | Path) -> list[str]:
    """accuracy.png, accuracy_vs_bytes.png, acc_vs_keep.png; returns the files written ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    run_dir = Path(run_dir)
    rows = [r for r in summary["per_round"] if "acc_mean" in r]
    title = f"{summary['algorithm']['name']} — {summary['options']['nodes']} nodes"
    out = []

    rounds = [r["round"] + 1 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, [100 * r["acc_mean"] for r in rows], label="mean")
    ax.fill_between(rounds, [100 * r["acc_min"] for r in rows], [100 * r["acc_max"] for r in rows], alpha=0.25, label="min–max")
    ax.set(xlabel="round", ylabel="personalized test accuracy (%)", title=title)
    ax.legend(), ax.grid(alpha=0.3)
    out.append(_save(fig, run_dir / "accuracy.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["bytes_cum"] for r in rows], [100 * r["acc_mean"] for r in rows], marker=".", label="encoded frames")
    ax.plot([r["bytes_reference_cum"] for r in rows], [100 * r["acc_mean"] for r in rows], ls="--", label="reference metric")
    ax.set(xlabel="cumulative bytes sent (all nodes)", ylabel="mean accuracy (%)", title=title)
    if any(r["bytes_cum"] > 0 for r in rows):
        ax.set_xscale("symlog")
    ax.legend(), ax.grid(alpha=0.3)
    out.append(_save(fig, run_dir / "accuracy_vs_bytes.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    nodes = [n for n in summary["nodes"] if n["final_acc"] is not None]
    ax.scatter([n["keep"] for n in nodes], [100 * n["final_acc"] for n in nodes])
    for n in nodes:
        ax.annotate(str(n["node"]), (n["keep"], 100 * n["final_acc"]), fontsize=7)
    ax.set(xlabel="keep ratio (from the node's profile)", ylabel="final accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    out.append(_save(fig, run_dir / "acc_vs_keep.png"))
    return out


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
