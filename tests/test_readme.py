"""The README's Python snippets run as pasted (against a live server on a free port)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
from conftest import TESTS, subprocess_env

from emotion import Server

ROOT = TESTS.parent
SNIPPETS: list[str] = re.findall(
    r"^ *```python\n(.*?)^ *```", (ROOT / "README.md").read_text(), re.M | re.S
)


def snippet(marker: str) -> str:
    """The README's one Python snippet that contains ``marker``."""
    (found,) = [s for s in SNIPPETS if marker in s]
    return found


async def run_python(*args: str, **env: str) -> tuple[int, str]:
    """Run ``python ARGS`` from the repository root; its exit code and all it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=subprocess_env(**env),
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.mark.parametrize(
    "marker", ["print(face.bbox", "client.stream(frames())", "PipelineStub(channel)"]
)
@pytest.mark.subprocess
async def test_a_client_snippet_runs_against_a_server(server: Server, marker: str) -> None:
    code = snippet(marker).replace("50051", str(server.port))

    code_, printed = await run_python("-c", code)

    assert code_ == 0, printed
    assert printed.strip()


@pytest.mark.subprocess
async def test_the_model_and_its_test_run_as_written(tmp_path: Path) -> None:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "mymodel.py").write_text(snippet("# mypkg/mymodel.py"))
    (tmp_path / "test_mymodel.py").write_text(snippet("# tests/test_mymodel.py"))

    code, printed = await run_python(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
        "--rootdir", str(tmp_path), str(tmp_path / "test_mymodel.py"),
        PYTHONPATH=str(tmp_path),
    )  # fmt: skip

    assert code == 0, printed
    assert "2 passed" in printed


def test_every_python_snippet_is_run_by_a_test_or_named_here() -> None:
    covered = {"print(face.bbox", "client.stream(frames())", "PipelineStub(channel)"}
    covered |= {"# mypkg/mymodel.py", "# tests/test_mymodel.py"}
    not_run = {
        "gradio_client"
    }  # needs a running demo page: tests/client/test_demo.py calls /predict

    for code in SNIPPETS:
        assert any(marker in code for marker in covered | not_run), code
