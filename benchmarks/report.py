"""The markdown tables the serving benchmark prints."""

from __future__ import annotations

import statistics

from loadgen import Result
from model_alone import Alone
from servers import Memory

MiB = 1024 * 1024


def table(results: list[Result]) -> str:
    lines = [
        "| image | bytes | callers | connections | server | req/s | p50 ms | p90 ms | p99 ms "
        "| errors | server CPU ms/req | client CPU ms/req | peak PSS MiB |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        errors = ", ".join(f"{n} {k}" for k, n in r.errors.items()) or "0"
        lines.append(
            f"| {r.image} | {r.size:,} | {r.concurrency} | {r.connections} | {r.server} "
            f"| {r.rate:.1f} | {r.percentile(0.5):.1f} | {r.percentile(0.9):.1f} "
            f"| {r.percentile(0.99):.1f} | {errors} | {r.cpu_per_request:.2f} "
            f"| {r.client_cpu_per_request:.2f} | {r.peak.pss / MiB:.0f} |"
        )
    return "\n".join(lines)


Key = tuple[str, str, int, int]


def key(result: Result) -> Key:
    return result.server, result.image, result.concurrency, result.connections


def median_runs(rounds: list[list[Result]]) -> list[Result]:
    """Each point's run with the median req/s over the rounds, in the order of the first round."""
    runs: dict[Key, list[Result]] = {}
    for results in rounds:
        for result in results:
            runs.setdefault(key(result), []).append(result)
    return [sorted(r, key=lambda x: x.ok_rate)[(len(r) - 1) // 2] for r in runs.values()]


def _spread(values: list[float], unit: str = "x") -> str:
    middle = statistics.median_low(values)  # the row shown is that round's
    if len(values) == 1:
        return f"{middle:.2f}{unit}"
    return f"{middle:.2f}{unit} ({min(values):.2f}-{max(values):.2f})"


def ratios(rounds: list[list[Result]]) -> str:
    """emotion against grpcio at the same callers and connections, and against REST's one run.

    Each round's ratio sets runs made minutes apart at most, so the machine's
    drift cancels; the median over the rounds is shown, with the range.
    REST runs once per callers count (HTTP/1.1 needs a connection per caller),
    so each of emotion's connection counts is set against that same run.
    """
    found: dict[tuple[str, int, int], dict[str, list[float]]] = {}
    # Why a ratio could not be taken, by point and column; shown only if no round had one.
    missing: dict[tuple[tuple[str, int, int], str], str] = {}
    for results in rounds:
        grpcio = {
            (r.image, r.concurrency, r.connections): r for r in results if r.server == "grpcio"
        }
        rest = {(r.image, r.concurrency): r for r in results if r.server == "REST"}
        for ours in results:
            if ours.server != "emotion":
                continue
            where = (ours.image, ours.concurrency, ours.connections)
            point = found.setdefault(where, {})
            theirs = grpcio.get(where)
            for name, other in (
                ("grpcio", theirs),
                ("REST", rest.get((ours.image, ours.concurrency))),
            ):
                why = _no_ratio(other)
                if why is None and other is not None:
                    point.setdefault(name, []).append(ours.ok_rate / other.ok_rate)
                else:
                    missing[(where, name)] = why or "-"
            if theirs is not None and theirs.ok_rate and not theirs.errors and ours.latencies:
                p99 = ours.percentile(0.99) / theirs.percentile(0.99)
                point.setdefault("p99", []).append(p99)
    lines = [
        "| image | callers | connections | emotion/grpcio req/s | emotion/REST req/s "
        "| p99 emotion / grpcio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for where, point in found.items():
        cells = []
        for name in ("grpcio", "REST", "p99"):
            values = point.get(name)
            if values:
                cells.append(_spread(values, "" if name == "p99" else "x"))
            else:
                cells.append(missing.get((where, name), "-"))
        image, callers, connections = where
        lines.append(f"| {image} | {callers} | {connections} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _no_ratio(other: Result | None) -> str | None:
    """Why emotion cannot be set against ``other``'s run, or None if it can."""
    if other is None:
        return "-"
    if other.requests == 0:
        return "no reference call ended in the window"
    if other.ok_rate == 0:
        return "reference failed every call"
    return None


def memory(idle: dict[str, Memory], results: list[Result]) -> str:
    """Each server's whole process tree, idle and at its highest sample under load."""
    lines = [
        "| server | idle PSS MiB | idle RSS MiB | peak PSS MiB | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for server, quiet in idle.items():
        peak = Memory()
        for result in results:
            if result.server == server:
                peak = peak.peak(result.peak)
        lines.append(
            f"| {server} | {quiet.pss / MiB:.0f} | {quiet.rss / MiB:.0f} "
            f"| {peak.pss / MiB:.0f} | {peak.rss / MiB:.0f} |"
        )
    return "\n".join(lines)


def against_alone(rounds: list[list[Result]], alone: list[list[Alone]], cpus: int) -> str:
    """Each point's req/s and CPU per request against the model alone, measured around it.

    The row shown is the round with the median req/s ratio; the range of the
    ratio over the rounds is beside it.
    """
    points: dict[Key, list[tuple[Result, Alone]]] = {}
    for results, floors in zip(rounds, alone, strict=True):
        for result, floor in zip(results, floors, strict=True):
            points.setdefault(key(result), []).append((result, floor))
    lines = [
        "| image | callers | connections | threads alone | emotion req/s "
        "| alone images/s (before, after) | req/s ratio | emotion CPU ms/req "
        "| alone CPU ms/image (before, after) | overhead |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for runs in points.values():
        runs.sort(key=lambda run: run[0].ok_rate / run[1].rate)
        result, floor = runs[(len(runs) - 1) // 2]
        before, after = floor.runs
        cpu = result.cpu_per_request
        rate_ratios = [r.ok_rate / f.rate for r, f in runs]
        overheads = [(r.cpu_per_request / f.cpu_ms - 1) * 100 for r, f in runs]
        overhead = _overhead(cpu / floor.cpu_ms, overheads)
        lines.append(
            f"| {result.image} | {result.concurrency} | {result.connections} "
            f"| {min(result.concurrency, cpus)} | {result.ok_rate:.1f} "
            f"| {floor.rate:.1f} ({before.rate:.1f}, {after.rate:.1f}) "
            f"| {_spread(rate_ratios, '')} | {cpu:.2f} "
            f"| {floor.cpu_ms:.2f} ({before.cpu_ms:.2f}, {after.cpu_ms:.2f}) "
            f"| {overhead} |"
        )
    return "\n".join(lines)


def against_paced(
    rounds: list[list[Result]], alone: list[list[Alone]], paced: list[dict[int, Alone]]
) -> str:
    """Each one-caller point's CPU per request against the model back to back and paced.

    The row shown is the round with the median overhead over the paced model;
    the range over the rounds is beside each overhead.
    """
    points: dict[Key, list[tuple[Result, Alone, Alone]]] = {}
    for results, floors, paced_floors in zip(rounds, alone, paced, strict=True):
        for place, slow in paced_floors.items():
            result = results[place]
            points.setdefault(key(result), []).append((result, floors[place], slow))
    lines = [
        "| image | connections | emotion CPU ms/req | alone back to back CPU ms/image "
        "| overhead | pause ms | alone paced CPU ms/image | overhead over paced |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for runs in points.values():
        runs.sort(key=lambda run: run[0].cpu_per_request / run[2].cpu_ms)
        result, floor, slow = runs[(len(runs) - 1) // 2]
        cpu = result.cpu_per_request
        back_to_back = [(r.cpu_per_request / f.cpu_ms - 1) * 100 for r, f, _ in runs]
        over_paced = [(r.cpu_per_request / p.cpu_ms - 1) * 100 for r, _, p in runs]
        lines.append(
            f"| {result.image} | {result.connections} | {cpu:.2f} | {floor.cpu_ms:.2f} "
            f"| {_overhead(cpu / floor.cpu_ms, back_to_back)} | {slow.pause_ms:.1f} "
            f"| {slow.cpu_ms:.2f} | {_overhead(cpu / slow.cpu_ms, over_paced)} |"
        )
    return "\n".join(lines)


def _overhead(ratio: float, over_rounds: list[float]) -> str:
    text = f"{(ratio - 1) * 100:+.0f}%"
    if len(over_rounds) > 1:
        text += f" ({min(over_rounds):+.0f} to {max(over_rounds):+.0f})"
    return text
