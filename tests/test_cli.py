"""`emotion serve` and `emotion predict` as a user runs them, in subprocesses."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EMOTION, TESTS, StartServer, encode, gradient, run_emotion, subprocess_env
from support.sample_models import GatedLoadModel, GatedModel, SizeModel
from support.served import free_port, start_serving

from emotion.cli import build_parser, serve_options


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(gradient(320, 240), "JPEG"))
    return path


@pytest.mark.subprocess
async def test_predict_prints_one_json_object_per_image(
    start_server: StartServer, photo: Path, tmp_path: Path
) -> None:
    server = await start_server(SizeModel())
    second = tmp_path / "second.png"
    second.write_bytes(encode(gradient(100, 50), "PNG"))

    code, out, err = await run_emotion(
        "predict", str(photo), str(second), "--target", f"127.0.0.1:{server.port}"
    )

    assert (code, err) == (0, "")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["file"] for line in lines] == [str(photo), str(second)]
    first_face = lines[0]["faces"][0]
    assert first_face["bbox"] == {"x1": 0, "y1": 0, "x2": 320, "y2": 240}
    assert first_face["expression"]["happiness"] == pytest.approx(320 / 560, abs=1e-4)
    assert set(first_face["expression"]) == {
        "neutral",
        "anger",
        "disgust",
        "fear",
        "happiness",
        "sadness",
        "surprise",
    }
    assert lines[1]["faces"][0]["bbox"]["x2"] == 100


@pytest.mark.subprocess
async def test_predict_reports_bad_images_and_missing_files_and_goes_on(
    start_server: StartServer, photo: Path, tmp_path: Path
) -> None:
    server = await start_server(SizeModel())
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")

    code, out, err = await run_emotion(
        "predict",
        str(bad),
        str(tmp_path / "missing.jpg"),
        str(photo),
        "--target",
        f"127.0.0.1:{server.port}",
    )

    assert code == 1
    assert [json.loads(line)["file"] for line in out.splitlines()] == [str(photo)]
    assert err.splitlines() == [
        f"emotion predict: {bad}: INVALID_ARGUMENT: request.image (12 bytes) is not a "
        "JPEG, PNG, WebP, BMP, GIF or TIFF image",
        f"emotion predict: {tmp_path / 'missing.jpg'}: No such file or directory",
    ]


@pytest.mark.subprocess
async def test_predict_against_an_unreachable_server_fails_in_one_line(photo: Path) -> None:
    port = free_port()

    code, out, err = await run_emotion("predict", str(photo), "--target", f"127.0.0.1:{port}")

    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"emotion predict: cannot reach 127.0.0.1:{port}")


@pytest.mark.subprocess
async def test_predict_times_out_in_one_line(start_server: StartServer, photo: Path) -> None:
    model = GatedModel()
    server = await start_server(model)
    try:
        code, _, err = await run_emotion(
            "predict", str(photo), "--target", f"127.0.0.1:{server.port}", "--timeout", "0.5"
        )
    finally:
        model.gate.set()

    assert code == 1
    assert err == f"emotion predict: {photo}: no answer from 127.0.0.1:{server.port} within 0.5s\n"


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (
            ["--model", "no_such_module:Model"],
            {},
            re.escape("emotion serve: model module 'no_such_module' not found"),
        ),
        (
            [],
            {"EMOTION_MODEL": "support.sample_models:NotAModel"},
            re.escape(
                "emotion serve: support.sample_models:NotAModel is not a subclass of emotion.Model"
            ),
        ),
        (  # loaded by the inference processes, by default
            ["--model", "support.sample_models:FailingLoadModel"],
            {},
            r"emotion serve: inference process [01] failed to start: model FailingLoadModel "
            r"failed to load: FileNotFoundError: weights\.bin is missing",
        ),
        (  # loaded by the worker
            ["--model", "support.sample_models:FailingLoadModel", "--inference-processes", "0"],
            {},
            r"emotion serve: model FailingLoadModel failed to load: "
            r"FileNotFoundError: weights\.bin is missing",
        ),
    ],
)
@pytest.mark.subprocess
async def test_serve_fails_at_startup_with_one_line_on_a_bad_model(
    args: list[str], env: dict[str, str], line: str
) -> None:
    code, _, err = await run_emotion("serve", "--port", "0", "--workers", "1", *args, **env)

    assert code == 1
    assert re.fullmatch(line, err.splitlines()[-1])


@pytest.mark.subprocess
async def test_a_model_that_cannot_load_in_its_process_is_logged_with_its_traceback() -> None:
    code, _, err = await run_emotion(
        "serve", "--port", "0", "--workers", "1", "--inference-processes", "1",
        "--model", "support.sample_models:FailingLoadModel",
    )  # fmt: skip

    assert code == 1
    assert re.search(
        r"ERROR \[\d+\] emotion\.inference\.process_main: model FailingLoadModel failed to load\n"
        r"Traceback",
        err,
    )
    assert 'raise FileNotFoundError("weights.bin is missing")' in err


@pytest.mark.subprocess
async def test_serve_with_workers_fails_at_startup_when_a_worker_cannot_load() -> None:
    code, _, err = await run_emotion(
        "serve", "--port", "0", "--workers", "2", "--inference-processes", "0",
        "--model", "support.sample_models:FailingLoadModel",
    )  # fmt: skip

    assert code == 1
    assert err.splitlines()[-1] in {
        f"emotion serve: worker {slot} failed to start: model FailingLoadModel failed to load: "
        "FileNotFoundError: weights.bin is missing"
        for slot in (0, 1)
    }


@pytest.mark.subprocess
async def test_serve_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        code, _, err = await run_emotion("serve", "--port", str(port))

    assert code == 1
    assert err.endswith(
        f"emotion serve: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


@pytest.mark.subprocess
async def test_serve_reads_its_settings_from_the_environment(photo: Path) -> None:
    port = free_port()
    served = await start_serving(
        EMOTION_PORT=str(port),
        EMOTION_MODEL="support.sample_models:SizeModel",
        EMOTION_LOG_LEVEL="debug",
    )
    process = served.process
    try:
        assert served.port == port
        code, out, _ = await run_emotion("predict", str(photo), "--target", f"127.0.0.1:{port}")
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)

    assert code == 0
    assert json.loads(out)["faces"][0]["bbox"]["x2"] == 320
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["serve", "--port", "http"], {}, "argument --port: must be a whole number, not 'http'"),
        (["serve", "--port", "70000"], {}, "argument --port: must be a port, 0-65535"),
        (["serve"], {"EMOTION_PORT": "abc"}, "EMOTION_PORT must be a whole number, not 'abc'"),
        (["serve"], {"EMOTION_GRACE": "-1"}, "EMOTION_GRACE must be a number of seconds, 0 or"),
        (["serve", "--threads", "-1"], {}, "argument --threads: must be 0 (one per CPU) or"),
        (["serve", "--workers", "0"], {}, "argument --workers: must be a whole number, 1 or more"),
        (["serve"], {"EMOTION_LOG_LEVEL": "trace"}, "EMOTION_LOG_LEVEL must be one of debug,"),
        (["serve", "--tls-key", "k.pem"], {}, "ServerTls.cert (--tls-cert) must be a file path"),
        (["predict", "x.jpg", "--timeout", "inf"], {}, "argument --timeout: must be a number of"),
        (["predict", "x.jpg", "--timeout", "nan"], {}, "argument --timeout: must be a number of"),
        (["predict", "x.jpg", "--timeout", "0"], {}, "--timeout: must be a number of seconds more"),
        (["predict", "x.jpg", "--target", "localhost"], {}, "is not of the form host:port"),
        (["predict", "x.jpg"], {"EMOTION_PREDICT_TIMEOUT": "-1"}, "EMOTION_PREDICT_TIMEOUT must"),
        (["predict", "x.jpg"], {"EMOTION_TARGET": "x"}, "EMOTION_TARGET target 'x' is not of"),
    ],
)
@pytest.mark.subprocess
def test_bad_flag_and_environment_values_are_usage_errors(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [*EMOTION, *args], capture_output=True, text=True, env=subprocess_env(**env), check=False
    )

    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["predict", "--help"]])
@pytest.mark.subprocess
def test_python_dash_m_emotion_is_the_same_cli(args: list[str]) -> None:
    def output(*command: str) -> str:
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, check=True, env=subprocess_env()
        ).stdout

    script = output(str(Path(sys.executable).with_name("emotion")))
    module = output(sys.executable, "-m", "emotion")

    assert module == script
    assert module.startswith(f"usage: emotion {args[0] if args[0] != '--help' else ''}")


@pytest.mark.subprocess
async def test_serve_without_the_fer_extra_says_what_to_install(tmp_path: Path) -> None:
    # A stand-in package that fails to import the way a missing one does.
    fake = tmp_path / "ai_edge_litert"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'ai_edge_litert'\", name='ai_edge_litert')\n"
    )

    code, _, err = await run_emotion("serve", "--port", "0", PYTHONPATH=str(tmp_path))

    assert code == 1
    assert err == (
        "emotion serve: model module 'emotion.models.fer' failed to import: "
        "ai_edge_litert is not installed; the fer model needs: pip install 'emotion[fer]'\n"
    )


@pytest.mark.subprocess
async def test_serve_with_no_model_flag_serves_the_fer_model(photo: Path) -> None:
    served = await start_serving("--port", "0")
    process, port = served.process, served.port
    try:
        code, out, _ = await run_emotion(
            "predict", str(TESTS / "fixtures" / "astronaut.jpg"), "--target", f"127.0.0.1:{port}"
        )
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)

    faces = json.loads(out)["faces"]
    assert code == 0
    assert len(faces) == 1
    assert max(faces[0]["expression"], key=faces[0]["expression"].get) == "happiness"


@pytest.mark.subprocess
async def test_the_console_script_finds_models_in_the_working_directory(
    tmp_path: Path, photo: Path
) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mymodel.py").write_text(
        "from emotion import BBox, Model, Response, Result\n"
        "class MyModel(Model):\n"
        "    def process_sample(self, image):\n"
        "        return Response(response=[Result(bbox=BBox(x2=image.width))])\n"
    )
    script = Path(sys.executable).with_name("emotion")
    env = subprocess_env()
    env.pop("PYTHONPATH")
    served = await start_serving(
        "--workers",
        "1",
        "--port",
        "0",
        "--model",
        "mypkg.mymodel:MyModel",
        command=[str(script)],
        cwd=tmp_path,
        env=env,
    )
    process, port = served.process, served.port
    try:
        code, out, _ = await run_emotion("predict", str(photo), "--target", f"127.0.0.1:{port}")
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)

    assert code == 0
    assert json.loads(out)["faces"][0]["bbox"]["x2"] == 320


@pytest.mark.subprocess
async def test_serve_on_a_host_that_does_not_resolve_fails_in_one_line() -> None:
    code, _, err = await run_emotion(
        "serve",
        "--workers",
        "1",
        "--host",
        "nosuch.invalid",
        "--model",
        "support.sample_models:PidModel",
    )

    assert code == 1
    assert err.splitlines()[-1].startswith("emotion serve: cannot listen on nosuch.invalid:50051: ")
    assert "Traceback" not in err


@pytest.mark.subprocess
async def test_host_and_log_level_come_from_the_environment(photo: Path) -> None:
    served = await start_serving(
        "--workers",
        "1",
        "--port",
        "0",
        EMOTION_HOST="127.0.0.2",
        EMOTION_LOG_LEVEL="warning",
        EMOTION_MODEL="support.sample_models:SizeModel",
    )
    process = served.process
    try:
        code, out, _ = await run_emotion(
            "predict", str(photo), "--target", f"127.0.0.2:{served.port}"
        )
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
        assert process.stderr is not None
        err = (await process.stderr.read()).decode()

    assert code == 0
    assert json.loads(out)["faces"][0]["bbox"]["x2"] == 320
    assert " INFO " not in err  # warning level: the INFO lines are gone


@pytest.mark.subprocess
async def test_predict_stops_at_the_first_unavailable(
    start_server: StartServer, photo: Path
) -> None:
    model = GatedLoadModel()
    server = await start_server(model, wait=False)
    try:
        code, out, err = await run_emotion(
            "predict", str(photo), str(photo), "--target", f"127.0.0.1:{server.port}"
        )
    finally:
        model.gate.set()

    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"emotion predict: {photo}: UNAVAILABLE: model is still loading; retry shortly"
    ]


def test_threads_flag_sets_the_inference_pool_size_and_0_gives_every_worker_every_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpus = 6
    monkeypatch.setattr("emotion.cli.available_cpus", lambda: cpus)

    def threads(*args: str) -> int | None:
        return serve_options(build_parser().parse_args(["serve", *args]), {}).server.threads

    assert threads("--threads", "3") == 3
    assert threads("--threads", "0", "--workers", "1") == cpus
    assert threads("--threads", "0", "--workers", str(cpus)) == cpus
    assert threads("--workers", str(cpus * 4)) == cpus


def test_workers_default_to_the_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("emotion.cli.available_cpus", lambda: 7)

    options = serve_options(build_parser().parse_args(["serve"]), {})

    assert options.workers == 7
    assert options.server.threads == 7


@pytest.mark.parametrize("reuse_port", [False, True])
@pytest.mark.subprocess
async def test_a_port_already_taken_is_refused_even_by_a_port_sharing_server(
    reuse_port: bool,
) -> None:
    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run_emotion(
            "serve",
            "--workers",
            "2",
            "--port",
            str(port),
            "--model",
            "support.sample_models:PidModel",
        )

    assert code == 1
    assert err.splitlines()[-1] == (
        f"emotion serve: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


@pytest.mark.parametrize("launcher", [[str(Path(sys.executable).parent / "emotion")], EMOTION])
@pytest.mark.subprocess
async def test_version_is_the_installed_distributions(launcher: list[str]) -> None:
    process = await asyncio.create_subprocess_exec(
        *launcher, "--version", stdout=asyncio.subprocess.PIPE, env=subprocess_env()
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 0
    assert out.decode() == f"emotion {importlib.metadata.version('emotion')}\n"


@pytest.mark.parametrize("command", ["predict", "demo"])
@pytest.mark.subprocess
async def test_a_target_with_a_scheme_is_refused_with_what_to_write_instead(command: str) -> None:
    args = ["x.jpg"] if command == "predict" else []

    code, _, err = await run_emotion(command, *args, "--target", "http://localhost:50051/")

    assert code == 2
    assert err.rstrip().endswith(
        "argument --target: target 'http://localhost:50051/' is not of the form host:port: "
        "leave out http://, gRPC targets have no scheme (try 'localhost:50051')"
    )


@pytest.mark.subprocess
async def test_predict_help_says_what_an_image_argument_may_be() -> None:
    code, out, _ = await run_emotion("predict", "--help")

    assert code == 0
    assert "IMAGE image files (JPEG, PNG, WebP, BMP, GIF, TIFF), or folders of them" in " ".join(
        out.split()
    )
