"""The tables faults.py prints: one run's, and rounds of two codes' set side by side."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fault_callers import Call, Streamed

EVENTS = ["quiet", "worker killed", "inference process killed", "restart"]
CODES = ["before", "after"]

#: The calls a latency is read from: those in flight during the event's first second.
WINDOW = 1.0


@dataclass
class Loaded:
    """One client's callers through one event (or none: "quiet")."""

    event: str
    client: str
    at: float  # when the event happened (time.monotonic)
    calls: list[Call]
    note: str
    back: float | None = None  # a restart: seconds from the event until it served again

    def failed(self) -> list[Call]:
        return [c for c in self.calls if c.error is not None]

    def during(self) -> list[float]:
        """Latencies of the answered calls in flight at some moment of the event's first second."""
        return [
            c.end - c.start
            for c in self.calls
            if c.error is None and c.start < self.at + WINDOW and c.end > self.at
        ]

    def answered(self) -> list[float]:
        return [c.end - c.start for c in self.calls if c.error is None]

    def too_late(self, deadline: float) -> int:
        """Failed calls whose deadline ended before the restarted server served."""
        if self.back is None:
            return 0
        return sum(c.start + deadline < self.at + self.back for c in self.failed())


@dataclass
class Restarted:
    """A connected client through SIGINT and a new `emotion serve` on the port."""

    client: str
    exited: float  # seconds from the SIGINT
    serving: float
    starts: int
    answered: float | None
    calls: list[Call]


def p99(latencies: list[float]) -> float:
    """In milliseconds; as loadgen's: the value at rank int(0.99 n)."""
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


def in_order(frames: list[int]) -> int:
    """How many answers, from the first, answer frames 0, 1, 2... in turn."""
    count = 0
    for number, frame in enumerate(frames):
        if frame != number:
            break
        count += 1
    return count


def kinds(calls: Iterable[Call]) -> Counter[str]:
    """Failures by kind: the status or exception, without its message."""
    return Counter((c.error or "").split(":", 1)[0] for c in calls if c.error is not None)


def _failed(calls: list[Call]) -> str:
    counted = kinds(calls)
    if not counted:
        return "0"
    return f"{sum(counted.values())} (" + ", ".join(f"{k} {n}" for k, n in counted.items()) + ")"


def parse(results: dict[str, Any]) -> tuple[list[Loaded], dict[str, Streamed], list[Restarted]]:
    loaded = [Loaded(**{**r, "calls": [Call(**c) for c in r["calls"]]}) for r in results["loaded"]]
    streams = {name: Streamed(**s) for name, s in results["streams"].items()}
    restarts = [
        Restarted(**{**r, "calls": [Call(**c) for c in r["calls"]]}) for r in results["restarts"]
    ]
    return loaded, streams, restarts


def run_tables(results: dict[str, Any]) -> str:
    loaded, streams, restarts = parse(results)
    frames = results["plan"]["frames"]
    quiet = {r.client: p99(r.answered()) for r in loaded if r.event == "quiet"}
    lines = [
        "| event | client | calls | failed | p99 quiet ms | p99 in the event's first second ms "
        "| added ms | slowest ms | what was done |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    examples: dict[str, str] = {}
    for r in loaded:
        for call in r.failed():
            assert call.error is not None
            examples.setdefault(f"{r.client}, {call.error.split(':', 1)[0]}", call.error)
        slowest = max(r.answered(), default=float("nan")) * 1000
        base = quiet.get(r.client, float("nan"))
        failed = _failed(r.calls)
        if late := r.too_late(results["deadline"]):
            failed += f"; {late} with the server back only past their deadline"
        if r.event == "quiet":
            during = added = "-"
        else:
            window = p99(r.during())
            during, added = f"{window:.0f}", f"{window - base:+.0f}"
        lines.append(
            f"| {r.event} | {r.client} | {len(r.calls)} | {failed} | {base:.0f} "
            f"| {during} | {added} | {slowest:.0f} | {r.note} |"
        )
    out = ["\n".join(lines)]
    if streams:
        rows = [
            f"| client | answered in order, of {frames} | answers | ended by |",
            "|---|---:|---:|---|",
        ]
        for name, s in streams.items():
            rows.append(f"| {name} | {in_order(s.frames)} | {len(s.frames)} | {s.error or '-'} |")
        out.append("\n".join(rows))
    if restarts:
        rows = [
            "| client | old server exited, s | new one serving, s | starts | first answer, s "
            "| failed calls |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for again in restarts:
            answered = "never" if again.answered is None else f"{again.answered:.2f}"
            rows.append(
                f"| {again.client} | {again.exited:.2f} | {again.serving:.2f} | {again.starts} "
                f"| {answered} | {_failed(again.calls)} |"
            )
            for call in again.calls:
                if call.error is not None:
                    examples.setdefault(
                        f"{again.client} (SIGINT), {call.error.split(':', 1)[0]}", call.error
                    )
        out.append("\n".join(rows))
    if examples:
        out.append("\n".join(f"- {where}: {text}" for where, text in examples.items()))
    return "\n\n".join(out)


def _spread(values: list[float], form: str = "{:g}") -> str:
    """Median (range); the median of an even count is the mean of the middle two."""
    values = [v for v in values if v == v]  # NaN: no such call in that round
    if not values:
        return "-"
    middle = form.format(statistics.median(values))
    if len(values) == 1 or min(values) == max(values):
        return middle
    return f"{middle} ({form.format(min(values))} to {form.format(max(values))})"


def rounds_tables(results: dict[str, list[dict[str, Any]]]) -> str:
    """Each code's rounds: failed calls and added p99 per event and client, median and range."""
    load: dict[tuple[str, str, str], list[Loaded]] = {}
    quiet: dict[tuple[str, str], list[float]] = {}
    stream: dict[tuple[str, str], list[Streamed]] = {}
    sigint: dict[tuple[str, str], list[Restarted]] = {}
    late: Counter[tuple[str, str, str]] = Counter()
    for code, each in results.items():
        for run in each:
            loaded, streams, restarts = parse(run)
            base = {r.client: p99(r.answered()) for r in loaded if r.event == "quiet"}
            for r in loaded:
                load.setdefault((r.event, code, r.client), []).append(r)
                late[(r.event, code, r.client)] += r.too_late(run.get("deadline", 5.0))
                if r.event != "quiet":
                    quiet.setdefault((r.event, f"{code}/{r.client}"), []).append(
                        p99(r.during()) - base[r.client]
                    )
            for name, s in streams.items():
                stream.setdefault((code, name), []).append(s)
            for again in restarts:
                sigint.setdefault((code, again.client), []).append(again)
    rows = [
        "| event | code | client | failed calls | failures seen | p99 added, ms |",
        "|---|---|---|---:|---|---:|",
    ]
    for (event, code, client), runs in sorted(load.items(), key=_event_order):
        seen = sum((kinds(r.calls) for r in runs), Counter[str]())
        shown = ", ".join(seen) or "-"
        if late[(event, code, client)]:
            shown += (
                f" ({late[(event, code, client)]} with the server back only past their deadline)"
            )
        added = quiet.get((event, f"{code}/{client}"), [])
        rows.append(
            f"| {event} | {code} | {client} | {_spread([len(r.failed()) for r in runs])} "
            f"| {shown} | {_spread(added, '{:+.0f}')} |"
        )
    out = ["\n".join(rows)]
    if stream:
        rows = ["| code | client | answered in order | ended by |", "|---|---|---:|---|"]
        for (code, client), cut in stream.items():
            ends = Counter((s.error or "its last answer").split(":", 1)[0] for s in cut)
            rows.append(
                f"| {code} | {client} | {_spread([in_order(s.frames) for s in cut])} "
                f"| {', '.join(f'{k} ({n} of {len(cut)})' for k, n in ends.items())} |"
            )
        out.append("\n".join(rows))
    if sigint:
        rows = [
            "| code | client | exited, s | serving again, s | first answer, s | failed calls |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for (code, client), tries in sigint.items():
            cells: list[Callable[[Restarted], float]] = [
                lambda r: r.exited,
                lambda r: r.serving,
                lambda r: float("nan") if r.answered is None else r.answered,
            ]
            times = [_spread([cell(r) for r in tries], "{:.2f}") for cell in cells]
            failed = _spread([len([c for c in r.calls if c.error]) for r in tries])
            rows.append(f"| {code} | {client} | {' | '.join(times)} | {failed} |")
        out.append("\n".join(rows))
    return "\n\n".join(out)


def _event_order(item: tuple[tuple[str, str, str], list[Loaded]]) -> tuple[int, int, str]:
    (event, code, client), _ = item
    return EVENTS.index(event), CODES.index(code) if code in CODES else len(CODES), client
