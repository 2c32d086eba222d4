"""Every setting of emotion, each declared once and validated.

Each class is a frozen dataclass that checks itself in ``__post_init__``: a
bad value raises ValueError naming the field and what it accepts. Fields that
a command line sets carry their flag (see :mod:`emotion.config.settings`), from
which `emotion.cli` builds each command's flags. Every flag has an
environment variable named by :func:`emotion.config.settings.env_name`.
"""

from emotion.config.client import (
    ClientTls,
    ConnectionPolicy,
    DemoOptions,
    PredictOptions,
    RetryPolicy,
)
from emotion.config.limits import (
    DEFAULT_MAX_IMAGE_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    REQUEST_OVERHEAD,
    ConnectionAge,
    ConnectionLimits,
    Limits,
)
from emotion.config.server import (
    DEFAULT_MODEL,
    DEFAULT_TARGET,
    LOG_LEVELS,
    LOOPS,
    ServeOptions,
    ServerConfig,
    ServerTls,
)

__all__ = [
    "DEFAULT_MAX_IMAGE_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MODEL",
    "DEFAULT_TARGET",
    "LOG_LEVELS",
    "LOOPS",
    "REQUEST_OVERHEAD",
    "ClientTls",
    "ConnectionAge",
    "ConnectionLimits",
    "ConnectionPolicy",
    "DemoOptions",
    "Limits",
    "PredictOptions",
    "RetryPolicy",
    "ServeOptions",
    "ServerConfig",
    "ServerTls",
]
