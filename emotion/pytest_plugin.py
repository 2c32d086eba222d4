"""emotion's pytest plugin: ``async def`` tests of modules that use emotion.testing run on asyncio.

pytest runs no coroutine by itself, and a model author's first test (one
that serves the model with ``serve_model``) is one. The plugin is
registered by entry point, so it loads wherever emotion is installed; it
therefore changes nothing else: no setting, no mode, no other module's tests.
It runs a coroutine test only if its module imports something from
``emotion.testing``, and only if no other plugin runs it (pytest-asyncio,
anyio and trio's plugins, by their markers or their mode). Async fixtures
are not its business: a project that wants them uses pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import inspect
from types import ModuleType

import pytest

KIT = "emotion.testing"
#: Markers by which another plugin claims a coroutine test.
CLAIMED_BY = ("asyncio", "anyio", "trio")


def uses_the_kit(module: ModuleType | None) -> bool:
    """Whether ``module`` holds anything imported from emotion.testing (or the module itself)."""
    if module is None:
        return False
    for value in vars(module).values():
        home = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", "")
        if isinstance(home, str) and (home == KIT or home.startswith(f"{KIT}.")):
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    test = pyfuncitem.obj
    # A plugin that runs the test itself has replaced it with a plain function by now.
    if not inspect.iscoroutinefunction(test) or not uses_the_kit(pyfuncitem.module):
        return None
    if any(pyfuncitem.get_closest_marker(name) for name in CLAIMED_BY):
        return None
    wanted = inspect.signature(test).parameters
    arguments = {name: value for name, value in pyfuncitem.funcargs.items() if name in wanted}
    asyncio.run(test(**arguments))
    return True
