"""emotion.pytest_plugin: async tests that use emotion.testing run; nothing else changes.

Each test runs pytest on a folder of its own, outside this repository, as a
model author's project would, with the plugin named by -p as its entry point
names it (an installed emotion loads it by itself).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS

#: Every test here starts pytest in a process of its own.
pytestmark = pytest.mark.subprocess

USES_THE_KIT = """
import asyncio

from emotion.testing import Sample


async def test_runs_on_asyncio(tmp_path):
    await asyncio.sleep(0)
    assert tmp_path.is_dir()
    assert Sample("portrait").encode()[:3] == b"\\xff\\xd8\\xff"
"""
ASYNC_ONLY = """
import asyncio


async def test_needs_a_plugin():
    await asyncio.sleep(0)
"""


def run_pytest(folder: Path, *args: str) -> tuple[int, str]:
    """pytest, as its console script runs, on ``folder``: exit code and output."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) != TESTS]
    env.pop("PYTHONPATH", None)  # not tests/, whose conftest would shadow theirs
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    done = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("asyncio_plugin", ["absent", "strict"])
def test_an_async_test_using_the_kit_runs_without_configuration(
    tmp_path: Path, asyncio_plugin: str
) -> None:
    (tmp_path / "test_kit.py").write_text(USES_THE_KIT)
    blocked = ["-p", "no:asyncio"] if asyncio_plugin == "absent" else []

    code, out = run_pytest(tmp_path, "-p", "emotion.pytest_plugin", *blocked)

    assert code == 0, out
    assert "1 passed" in out


def test_an_async_test_that_does_not_use_the_kit_is_left_to_pytest(tmp_path: Path) -> None:
    (tmp_path / "test_other.py").write_text(ASYNC_ONLY)

    code, out = run_pytest(tmp_path, "-p", "emotion.pytest_plugin", "-p", "no:asyncio")

    assert code == 1, out
    assert "async def functions are not natively supported" in out


#: Counts the coroutines the plugin runs itself, in the pytest run it is the conftest of.
SPY = """
import asyncio

import emotion.pytest_plugin

RAN = []


class Spy:
    @staticmethod
    def run(coroutine):
        RAN.append(coroutine)
        return asyncio.run(coroutine)


emotion.pytest_plugin.asyncio = Spy


def pytest_sessionfinish(session):
    print(f"the plugin ran {len(RAN)}")
"""


@pytest.mark.parametrize(
    ("settings", "ran"),
    [
        ([], 1),
        (["-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"], 0),
    ],
    ids=["strict", "auto"],
)
def test_a_test_pytest_asyncio_runs_is_left_to_it(
    tmp_path: Path, settings: list[str], ran: int
) -> None:
    (tmp_path / "conftest.py").write_text(SPY)
    (tmp_path / "test_kit.py").write_text(USES_THE_KIT)
    marked = USES_THE_KIT.replace("import asyncio", "import asyncio\nimport pytest", 1)
    (tmp_path / "test_marked.py").write_text(
        marked.replace("async def", "@pytest.mark.asyncio\nasync def")
    )

    code, out = run_pytest(tmp_path, "-p", "emotion.pytest_plugin", "-s", *settings)

    assert code == 0, out
    assert "2 passed" in out
    assert f"the plugin ran {ran}" in out  # strict: the unmarked one; auto: neither


def test_a_test_marked_for_another_plugin_is_left_to_it_even_when_it_is_missing(
    tmp_path: Path,
) -> None:
    marked = USES_THE_KIT.replace("import asyncio", "import asyncio\nimport pytest", 1)
    (tmp_path / "test_trio.py").write_text(
        marked.replace("async def", "@pytest.mark.trio\nasync def")
    )

    code, out = run_pytest(tmp_path, "-p", "emotion.pytest_plugin", "-p", "no:asyncio")

    assert code == 1, out
    assert "async def functions are not natively supported" in out


def test_the_entry_point_is_named_as_the_module_so_that_p_loads_it_once() -> None:
    import tomllib

    project = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["project"]

    assert project["entry-points"]["pytest11"] == {"emotion.pytest_plugin": "emotion.pytest_plugin"}
