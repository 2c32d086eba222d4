"""The caller's trace on an outgoing call (W3C ``traceparent``), whether or not we trace."""

from __future__ import annotations

import sys


def trace_headers() -> dict[str, str] | None:
    """The current trace's ``traceparent`` (and ``tracestate``) for an outgoing call.

    Only when the caller already uses OpenTelemetry: a program that has not
    imported it gets None, at the cost of a dictionary lookup. Needs the API
    alone, not the SDK.
    """
    if "opentelemetry.trace" not in sys.modules:
        return None
    try:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    headers: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(headers)
    return headers or None
