"""The markdown tables the serving benchmark prints."""

from __future__ import annotations

from loadgen import Result


def table(results: list[Result]) -> str:
    lines = [
        "| image | bytes | callers | server | req/s | p50 ms | p90 ms | p99 ms | errors "
        "| server CPU ms/req |",
        "|---|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        errors = ", ".join(f"{n} {k}" for k, n in r.errors.items()) or "0"
        lines.append(
            f"| {r.image} | {r.size:,} | {r.concurrency} | {r.server} | {r.rate:.1f} | "
            f"{r.percentile(0.5):.1f} | {r.percentile(0.9):.1f} | {r.percentile(0.99):.1f} | "
            f"{errors} | {r.cpu_per_request:.2f} |"
        )
    return "\n".join(lines)


def ratios(results: list[Result]) -> str:
    def ok_rate(r: Result) -> float:
        return (r.requests - sum(r.errors.values())) / r.seconds if r.seconds else 0.0

    by_key = {(r.server, r.image, r.concurrency): r for r in results}
    lines = [
        "| image | callers | emotion/grpcio req/s | emotion/REST req/s | p99 emotion / grpcio |",
        "|---|---:|---:|---:|---:|",
    ]
    for (server, image, concurrency), ours in by_key.items():
        if server != "emotion":
            continue
        grpcio = by_key.get(("grpcio", image, concurrency))
        rest = by_key.get(("REST", image, concurrency))

        def ratio(other: Result | None, ours: Result = ours) -> str:
            if other is None:
                return "-"
            if ok_rate(other) == 0:
                return "reference failed every call"
            return f"{ok_rate(ours) / ok_rate(other):.2f}x"

        p99 = "-"
        if grpcio is not None and ok_rate(grpcio) and not grpcio.errors:
            p99 = f"{ours.percentile(0.99) / grpcio.percentile(0.99):.2f}"
        lines.append(f"| {image} | {concurrency} | {ratio(grpcio)} | {ratio(rest)} | {p99} |")
    return "\n".join(lines)


def overhead(results: list[Result], floors: dict[str, list[float]]) -> str:
    """Server CPU per request against the model's CPU per image (before, after) in-process."""
    lines = [
        "| image | callers | model alone CPU ms/image (before, after) "
        "| server CPU ms/request | overhead |",
        "|---|---:|---:|---:|---:|",
    ]
    for result in results:
        before, after = floors[result.image]
        floor = (before + after) / 2
        cpu = result.cpu_per_request
        alone = f"{floor:.2f} ({before:.2f}, {after:.2f})"
        lines.append(
            f"| {result.image} | {result.concurrency} | {alone} "
            f"| {cpu:.2f} | {(cpu / floor - 1) * 100:+.0f}% |"
        )
    return "\n".join(lines)
