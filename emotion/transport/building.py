"""grpclib's ``H2Protocol.connection_made``, building an h2 connection of our class."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import grpclib.protocol
from h2.connection import H2Connection


def with_our_connection(
    method: Callable[..., Any], connection: Callable[..., H2Connection]
) -> Callable[..., Any]:
    """grpclib's own ``method``, reading ``H2Connection`` from a namespace where it is ours.

    grpclib builds its h2 connection from the module-level name
    ``grpclib.protocol.H2Connection`` inside ``H2Protocol.connection_made``.
    Rebinding the unchanged code to a copy of that module's names changes
    nothing for anyone else (a swap of the module global would, for a
    moment, for every thread), and copies no source.
    """
    names = dict(vars(grpclib.protocol), H2Connection=connection)
    return types.FunctionType(
        method.__code__, names, method.__name__, method.__defaults__, method.__closure__
    )
