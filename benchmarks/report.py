"""The markdown tables the serving benchmark prints."""

from __future__ import annotations

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


def ratios(results: list[Result]) -> str:
    """emotion against grpcio at the same callers and connections, and against REST's one run.

    REST runs once per callers count (HTTP/1.1 needs a connection per caller),
    so each of emotion's connection counts is set against that same run.
    """
    grpcio = {(r.image, r.concurrency, r.connections): r for r in results if r.server == "grpcio"}
    rest = {(r.image, r.concurrency): r for r in results if r.server == "REST"}
    lines = [
        "| image | callers | connections | emotion/grpcio req/s | emotion/REST req/s "
        "| p99 emotion / grpcio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for ours in results:
        if ours.server != "emotion":
            continue
        theirs = grpcio.get((ours.image, ours.concurrency, ours.connections))

        def ratio(other: Result | None, ours: Result = ours) -> str:
            if other is None:
                return "-"
            if other.requests == 0:
                return "no reference call ended in the window"
            if other.ok_rate == 0:
                return "reference failed every call"
            return f"{ours.ok_rate / other.ok_rate:.2f}x"

        p99 = "-"
        if theirs is not None and theirs.ok_rate and not theirs.errors:
            p99 = f"{ours.percentile(0.99) / theirs.percentile(0.99):.2f}"
        lines.append(
            f"| {ours.image} | {ours.concurrency} | {ours.connections} | {ratio(theirs)} "
            f"| {ratio(rest.get((ours.image, ours.concurrency)))} | {p99} |"
        )
    return "\n".join(lines)


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


def against_alone(results: list[Result], alone: list[Alone], cpus: int) -> str:
    """Each point's req/s and CPU per request against the model alone, measured around it."""
    lines = [
        "| image | callers | connections | threads alone | emotion req/s "
        "| alone images/s (before, after) | req/s ratio | emotion CPU ms/req "
        "| alone CPU ms/image (before, after) | overhead |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result, floor in zip(results, alone, strict=True):
        before, after = floor.runs
        cpu = result.cpu_per_request
        lines.append(
            f"| {result.image} | {result.concurrency} | {result.connections} "
            f"| {min(result.concurrency, cpus)} | {result.ok_rate:.1f} "
            f"| {floor.rate:.1f} ({before.rate:.1f}, {after.rate:.1f}) "
            f"| {result.ok_rate / floor.rate:.2f} | {cpu:.2f} "
            f"| {floor.cpu_ms:.2f} ({before.cpu_ms:.2f}, {after.cpu_ms:.2f}) "
            f"| {(cpu / floor.cpu_ms - 1) * 100:+.0f}% |"
        )
    return "\n".join(lines)
