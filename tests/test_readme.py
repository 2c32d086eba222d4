"""The README's and docs/'s snippets run as pasted, and the output they show is what runs print.

Every fenced block of README.md and docs/*.md is either run here, checked by
tests/test_docs.py (each command line it shows), or named in NOT_RUN with
the reason; a new block that is none of these fails
test_every_snippet_is_run_by_a_test_or_named_here.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import re
import sys
from pathlib import Path

import pytest
from conftest import StartServer, subprocess_env
from support.pages import ROOT, Block, all_blocks

from emotion import Server

#: Python snippets run below, by a line each contains.
CLIENT_SNIPPETS = (
    "print(face.bbox",
    "client.stream(frames())",
    "PipelineStub(channel)",
    "grpc.service_config",
    "RetryPolicy(max_attempts=8",
    "ThreadPoolExecutor(4)",
    "ConnectionPolicy(per_address=1",
)
MODEL_SNIPPETS = (
    "# mypkg/mymodel.py",
    "# tests/test_mymodel.py",
    "# conftest.py",
    "# mypkg/described.py",
)
#: Snippets, by a line each contains, that no test runs, and why.
NOT_RUN = {
    "gradio_client": "needs a running demo page: tests/client/test_demo.py calls /predict",
}


def snippet(marker: str, lang: str = "python") -> Block:
    """The one block of README.md or docs/ in ``lang`` that contains ``marker``."""
    (found,) = [b for b in all_blocks() if b.lang == lang and marker in b.code]
    return found


def shown_output(block: Block, command: str) -> list[str]:
    """The lines a console block shows after ``$ command``, up to the next prompt."""
    lines = block.code.splitlines()
    shown = []
    for line in lines[lines.index(f"$ {command}") + 1 :]:
        if line.startswith("$ "):
            break
        shown.append(line)
    return shown


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


@pytest.mark.parametrize("marker", CLIENT_SNIPPETS)
@pytest.mark.subprocess
async def test_a_client_snippet_runs_against_a_server(server: Server, marker: str) -> None:
    code = snippet(marker).code.replace("50051", str(server.port))

    code_, printed = await run_python("-c", code)

    assert code_ == 0, printed
    assert printed.strip()


@pytest.mark.subprocess
async def test_the_model_and_its_tests_pass_as_pasted_in_a_folder_outside_the_repository() -> None:
    # What `tox -e kit` runs after installing the checkout with the testing extra;
    # here pytest-asyncio is blocked (the extra does not bring it) and the plugin
    # named, as this environment may have emotion installed without its entry point.
    code, printed = await run_python(
        str(ROOT / "tools" / "readme_kit.py"),
        "-p", "emotion.pytest_plugin", "-p", "no:asyncio", "-p", "no:cacheprovider",
    )  # fmt: skip

    assert code == 0, printed
    assert "3 passed" in printed
    assert {f"wrote {path}" for path in ("mypkg/mymodel.py", "tests/test_mymodel.py")} <= set(
        printed.splitlines()
    )


def test_the_readme_installs_the_extra_the_kit_environment_installs() -> None:
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    install = next(line for line in snippet("[testing]", "sh").code.splitlines() if "pip" in line)

    assert "[testing]" in install
    assert tox["testenv:kit"]["extras"].split() == ["testing"]
    assert "kit" in tox["tox"]["envlist"].replace(" ", "").split(",")


PREDICT = ".venv/bin/emotion predict tests/fixtures/astronaut.jpg"


@pytest.mark.subprocess
async def test_predict_prints_what_the_readme_shows(start_server: StartServer) -> None:
    from emotion.models.fer import FerModel  # the fer extra; the test extra installs it

    (shown,) = shown_output(snippet(PREDICT, "console"), PREDICT)
    server = await start_server(FerModel())
    args = PREDICT.split()[1:]

    code, printed = await run_python("-m", "emotion", *args, "--target", f"127.0.0.1:{server.port}")

    assert code == 0, printed
    got, expected = json.loads(printed), json.loads(shown)
    assert list(got) == list(expected)
    assert (got["file"], got["model"]) == (expected["file"], expected["model"])
    assert len(got["faces"]) == len(expected["faces"])
    for face, face_shown in zip(got["faces"], expected["faces"], strict=True):
        assert list(face) == list(face_shown)
        assert face["bbox"] == pytest.approx(face_shown["bbox"], abs=1.0)  # pixels
        assert face["confidence"] == pytest.approx(face_shown["confidence"], abs=0.01)
        assert face["expression"] == pytest.approx(face_shown["expression"], abs=0.01)
        for name, point in face["landmarks"].items():
            assert point == pytest.approx(face_shown["landmarks"][name], abs=1.0), name


GRPCURL_LIST = "grpcurl -plaintext 127.0.0.1:50051 list"


@pytest.mark.subprocess
async def test_grpcurl_lists_what_reflection_lists(server: Server) -> None:
    shown = shown_output(snippet(GRPCURL_LIST, "console"), GRPCURL_LIST)

    code, printed = await run_python(
        str(ROOT / "tests" / "support" / "reflect.py"), f"127.0.0.1:{server.port}"
    )

    assert code == 0, printed
    assert json.loads(printed)["services"] == shown


TEST_COMMAND = "pip install -q tox=="


def test_the_readme_test_command_is_what_ci_runs() -> None:
    (command,) = snippet(TEST_COMMAND, "sh").code.splitlines()

    assert snippet(TEST_COMMAND, "sh").page.name == "README.md"
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


_RPC = r"rpc\s+(\w+)\(\s*(stream\s+)?(\w+)\)\s*returns\s*\((stream\s+)?(\w+)\)"
_FIELD = r"(repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+)\s*;"


def _contract(text: str) -> set[tuple[str, ...]]:
    """Each rpc and each message field of a .proto text, its comments ignored."""
    text = re.sub(r"//[^\n]*", "", text)
    parts = {("rpc", *(word.strip() for word in rpc)) for rpc in re.findall(_RPC, text)}
    for name, body in re.findall(r"message\s+(\w+)\s*\{(.*?)\}", text, re.S):
        for field in re.findall(_FIELD, body):
            parts.add((name, *(word.strip() for word in field)))
    return parts


def test_the_contract_page_shows_the_proto() -> None:
    proto = (ROOT / "protos" / "emotion" / "v1" / "emotion.proto").read_text()

    shown = _contract(snippet("service Pipeline", "proto").code)

    assert shown == _contract(proto)
    # rpcs and fields: the regexes found them
    assert len(shown) == 3 + 3 + 3 + 3 + 6 + 4 + 7 + 6 + 2 + 2 + 3 + 6 + 5 + 2 + 2 + 8


def test_every_snippet_is_run_by_a_test_or_named_here() -> None:
    run = {*CLIENT_SNIPPETS, *MODEL_SNIPPETS}
    for block in all_blocks():
        if block.lang in {"sh", "console"}:
            continue  # each command line is checked by tests/test_docs.py
        assert block.lang in {"python", "proto"}, f"{block}: a {block.lang!r} block"
        if block.lang == "proto":
            assert "service Pipeline" in block.code, f"{block}: not the contract's"
            continue
        assert any(marker in block.code for marker in run | set(NOT_RUN)), f"{block}"


#: Serves docs/models.md's model as `emotion serve` would, and prints what a caller sees.
_DESCRIBED = """
import asyncio
from pathlib import Path

from emotion import Options
from emotion.testing import serve_model
from mypkg.described import MyModel


async def main() -> None:
    async with serve_model(MyModel()) as client:
        described = await client.describe()
        image = Path("tests/fixtures/astronaut.jpg").read_bytes()
        answer = await client.predict(image, options=Options(min_confidence=0.95))
        kept = await client.predict(image, options=Options(max_faces=1))
    print(described.model.to_json(), answer.to_json(), kept.to_json(), sep="\\n")


asyncio.run(main())
"""


@pytest.mark.subprocess
async def test_the_model_that_tells_the_server_about_itself_is_served_as_written(
    tmp_path: Path,
) -> None:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "described.py").write_text(snippet("# mypkg/described.py").code)

    code, printed = await run_python("-c", _DESCRIBED, PYTHONPATH=str(tmp_path))

    assert code == 0, printed
    described, dropped, kept = (json.loads(line) for line in printed.splitlines()[-3:])
    assert described == {
        "name": "MyModel",
        "version": "2.1.0",
        "weightsDigest": "sha256:" + "0" * 64,
        "labels": ["neutral", "happiness"],
        "fillsConfidence": True,
        "fillsLandmarks": True,
    }
    assert dropped == {"model": {"name": "MyModel", "version": "2.1.0"}}  # 0.9 < 0.95
    (face,) = kept["response"]
    assert face["confidence"] == pytest.approx(0.9)
    assert face["landmarks"] == {"noseTip": {"x": 256.0, "y": 256.0}}
