"""The live table of ``fleet run``: one row per node (round, accuracy, bytes, stale, rejected, deadline misses).

Without a terminal (systemd, nohup, CI) or with ``fmt="json"`` it prints one line every
``every`` rounds instead (the slowest node's round, mean accuracy, bytes, nodes done).
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["LiveTable"]


def _kb(n: float) -> str:
    return f"{n / 1024:.1f}"


class LiveTable:
    """A rich Live table on stderr, refreshed from the nodes' metrics; a no-op when disabled."""

    def __init__(self, nodes: int, rounds: int, *, disabled: bool = False, max_rows: int = 40,
                 every: int | None = None, fmt: str = "text", console: Console | None = None) -> None:
        self.nodes, self.rounds, self.disabled, self.max_rows = nodes, rounds, disabled, max_rows
        self.console = console or Console(stderr=True)
        self.fmt = fmt
        self.lines = fmt == "json" or not self.console.is_terminal
        self.every = every or max(1, round(rounds / 20))
        self._next = self.every
        self._t = time.perf_counter()
        self._done_at_t = 0
        self._live: Live | None = None
        self._header = ""

    def __enter__(self) -> "LiveTable":
        if not self.disabled and not self.lines:
            self._live = Live(Table(), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def started(self, plan: Any, run_dir: Any, url: str, security: str | None = None) -> None:
        keeps = ", ".join(f"{k:.2f}" for k in sorted(set(plan.keeps)))
        self._header = f"run dir {run_dir}  broker {url}  topology {plan.topology.name}  keep {keeps}"
        if security:
            self._header += f"\nsecurity: {security}"
        if self.lines and not self.disabled:
            self._print(self._header, {"event": "fleet", "run_dir": str(run_dir), "broker": url,
                                       "topology": plan.topology.name, "keeps": sorted(set(plan.keeps)),
                                       "security": security})

    def _print(self, text: str, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, default=str) if self.fmt == "json" else text
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _line(self, statuses: list[Any]) -> None:
        """One progress line when the slowest node has passed the next multiple of ``every``."""
        slowest = min((s.round for s in statuses), default=0)
        final = slowest >= self.rounds and self._done_at_t < self.rounds
        if slowest < self._next and not final:
            return
        now = time.perf_counter()
        spr = (now - self._t) / max(1, slowest - self._done_at_t)
        self._t, self._done_at_t = now, slowest
        while self._next <= slowest:
            self._next += self.every
        accs = [s.acc for s in statuses if s.acc is not None]
        acc = sum(accs) / len(accs) if accs else None
        sent = sum(s.bytes_sent for s in statuses)
        done = sum(1 for s in statuses if s.round >= self.rounds)
        acc_s = "-" if acc is None else f"{100 * acc:.2f}%"
        self._print(f"fleet round {slowest}/{self.rounds}  mean acc {acc_s}  sent {sent / 1024:.1f} KiB  "
                    f"{done}/{len(statuses)} nodes done  {spr:.2f} s/round",
                    {"event": "round", "round": slowest, "rounds": self.rounds, "acc_mean": acc, "bytes_sent": sent,
                     "nodes_done": done, "s_per_round": round(spr, 4)})

    def update(self, statuses: list[Any]) -> None:
        if self.lines and not self.disabled:
            self._line(statuses)
            return
        if self._live is None:
            return
        table = Table(title=self._header, title_justify="left")
        for col in ("node", "round", "acc %", "loss", "sent KiB", "recv KiB", "stale", "rejected", "missed"):
            table.add_column(col, justify="right")
        shown = statuses if len(statuses) <= self.max_rows else statuses[: self.max_rows]
        for st in shown:
            table.add_row(str(st.node), f"{st.round}/{self.rounds}", "-" if st.acc is None else f"{100 * st.acc:.2f}",
                          "-" if st.loss is None else f"{st.loss:.3f}", _kb(st.bytes_sent), _kb(st.bytes_received),
                          str(st.stale), str(st.rejected), str(getattr(st, "deadline_misses", 0)))
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
        misses = summary.get("deadline_misses")
        missed = "" if misses is None else f"{misses} deadline miss{'es' if misses != 1 else ''}; "
        out.print(f"personalized accuracy {mean}; {f['bytes_per_round'] / 1024:.1f} KiB per round; {missed}"
                  f"summary in {summary['run_dir']}/summary.md")
