"""The public API: exactly the names `import emotion` offers, in one sorted list."""

from __future__ import annotations

from types import ModuleType

import emotion

PUBLIC = [
    "BBox",
    "Client",
    "ClientTls",
    "ConnectionPolicy",
    "Expression",
    "InvalidMessage",
    "Landmarks",
    "Limits",
    "Model",
    "ModelLoadError",
    "Options",
    "PipelineStub",
    "Point",
    "Request",
    "Response",
    "Result",
    "RetryPolicy",
    "Server",
    "ServerConfig",
    "SyncClient",
    "Tracking",
    "load_model",
]


def test_all_is_exactly_the_public_api_in_sorted_order() -> None:
    # Adding, renaming or removing a public name is a decision: this list changes with it.
    assert emotion.__all__ == PUBLIC
    assert emotion.__all__ == sorted(emotion.__all__)


def test_every_public_name_is_importable_from_the_package() -> None:
    assert all(getattr(emotion, name, None) is not None for name in emotion.__all__)


def test_the_package_exposes_no_public_name_outside_all() -> None:
    exposed = {
        name
        for name, value in vars(emotion).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }

    assert exposed == set(emotion.__all__)
