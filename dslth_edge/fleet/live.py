"""The live table of ``fleet run``: one row per node (round, accuracy, bytes, stale, rejected)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["LiveTable"]


def _kb(n: float) -> str:
    return f"{n / 1024:.1f}"


class LiveTable:
    """A rich Live table on stderr, refreshed from the nodes' metrics; a no-op when disabled."""

    def __init__(self, nodes: int, rounds: int, *, disabled: bool = False, max_rows: int = 40) -> None:
        self.nodes, self.rounds, self.disabled, self.max_rows = nodes, rounds, disabled, max_rows
        self.console = Console(stderr=True)
        self._live: Live | None = None
        self._header = ""

    def __enter__(self) -> "LiveTable":
        if not self.disabled:
            self._live = Live(Table(), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def started(self, plan: Any, run_dir: Any, url: str) -> None:
        keeps = ", ".join(f"{k:.2f}" for k in sorted(set(plan.keeps)))
        self._header = f"run dir {run_dir}  broker {url}  topology {plan.topology.name}  keep {keeps}"

    def update(self, statuses: list[Any]) -> None:
        if self._live is None:
            return
        table = Table(title=self._header, title_justify="left")
        for col in ("node", "round", "acc %", "loss", "sent KiB", "recv KiB", "stale", "rejected"):
            table.add_column(col, justify="right")
        shown = statuses if len(statuses) <= self.max_rows else statuses[: self.max_rows]
        for st in shown:
            table.add_row(str(st.node), f"{st.round}/{self.rounds}", "-" if st.acc is None else f"{100 * st.acc:.2f}",
                          "-" if st.loss is None else f"{st.loss:.3f}", _kb(st.bytes_sent), _kb(st.bytes_received),
                          str(st.stale), str(st.rejected))
        if len(statuses) > len(shown):
            done = sum(1 for s in statuses if s.round >= self.rounds)
            table.caption = f"{len(statuses) - len(shown)} more nodes; {done}/{len(statuses)} finished"
        self._live.update(table)

    def print_summary(self, summary: dict[str, Any]) -> None:
        f = summary["final"]
        out = Console()
        table = Table(title=f"fleet summary: {summary['rounds']} rounds in {summary['seconds']:.1f} s", title_justify="left")
        for col in ("node", "profile", "keep", "final acc %", "sent KiB"):
            table.add_column(col, justify="right")
        for n in summary["nodes"]:
            acc = "-" if n["final_acc"] is None else f"{100 * n['final_acc']:.2f}"
            table.add_row(str(n["node"]), str(n["profile"]), f"{n['keep']:.3f}", acc, _kb(n["bytes_sent"]))
        out.print(table)
        mean = "-" if f["acc_mean"] is None else f"{100 * f['acc_mean']:.2f} ± {100 * f['acc_std']:.2f} %"
        out.print(f"personalized accuracy {mean}; {f['bytes_per_round'] / 1024:.1f} KiB per round; "
                  f"summary in {summary['run_dir']}/summary.md")
