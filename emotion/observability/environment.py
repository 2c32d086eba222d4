"""The tracer the ``OTEL_*`` variables ask for, and what a client's call carries of its trace.

The one place that loads :mod:`.otel` (OpenTelemetry, an optional extra), by
name and only when asked: :mod:`.tracing` is the interface both sides use,
so nothing imports back.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Mapping
from typing import TextIO

from emotion.observability.tracing import NoTracing, Tracer

log = logging.getLogger(__name__)


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces (the SDK's own default is otlp;
    ours is off, so that nothing is imported unless asked for)."""
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    disabled = environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return bool(exporters) and exporters != "none" and not disabled


#: What each OTEL_TRACES_EXPORTER value needs, as (module, the pip package that has it);
#: an unknown value needs the SDK's provider (otel warns about the name).
_SDK = (("opentelemetry.trace", "opentelemetry-api"), ("opentelemetry.sdk", "opentelemetry-sdk"))
_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "console": _SDK,
    "otlp": (
        *_SDK,
        ("opentelemetry.exporter.otlp.proto.http", "opentelemetry-exporter-otlp-proto-http"),
    ),
}


def missing_packages(environ: Mapping[str, str]) -> list[str]:
    """The pip packages that ``OTEL_TRACES_EXPORTER``'s exporters need and are not installed.

    Found without importing them, so that a supervisor can ask for its workers.
    """
    needed: dict[str, str] = {}
    for name in environ.get("OTEL_TRACES_EXPORTER", "").split(","):
        name = name.strip().lower()
        if name not in {"", "none"}:
            needed.update(_NEEDS.get(name, _SDK))
    return [package for module, package in needed.items() if not _installed(module)]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # its parent package is missing, or hidden
        return False


def tracing_available(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces and what they need is installed.

    When a package is missing, this warns, naming it, and says False: serving
    matters more than tracing. A supervisor asks once and tells its workers.
    """
    environ = os.environ if environ is None else environ
    if not tracing_wanted(environ):
        return False
    missing = missing_packages(environ)
    if missing:
        log.warning(
            "OTEL_TRACES_EXPORTER=%s asks for traces, but %s %s not installed: "
            "pip install 'emotion[otel]'; continuing without tracing",
            environ.get("OTEL_TRACES_EXPORTER"),
            ", ".join(missing),
            "is" if len(missing) == 1 else "are",
        )
        return False
    return True


def tracing_from_environment(
    environ: Mapping[str, str] | None = None, *, console: TextIO | None = None
) -> Tracer:
    """The tracer the ``OTEL_*`` variables ask for, or :class:`NoTracing`.

    ``OTEL_TRACES_EXPORTER`` names ``otlp`` (OTLP over HTTP, to
    ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``), ``console`` or ``none``;
    ``OTEL_SERVICE_NAME`` defaults to ``emotion``; the SDK reads
    ``OTEL_TRACES_SAMPLER[_ARG]`` itself. ``console`` is where the console
    exporter writes (stdout by default). Without what the exporters need
    installed this warns once and returns NoTracing (:func:`tracing_available`).
    """
    environ = os.environ if environ is None else environ
    if not tracing_available(environ):
        return NoTracing()
    try:
        # Deferred: the extra is imported only when asked for, and only here.
        import emotion.observability.otel as otel

        tracing: Tracer = otel.from_environment(environ, console)
    except ImportError as exc:  # installed, yet it does not import: a broken install
        log.warning(
            "OTEL_TRACES_EXPORTER=%s asks for traces, but %s does not import (%s): "
            "pip install 'emotion[otel]'; continuing without tracing",
            environ.get("OTEL_TRACES_EXPORTER"),
            exc.name,
            exc,
        )
        return NoTracing()
    return tracing
