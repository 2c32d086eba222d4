"""`emotion demo`: its API through gradio_client and its page in a real browser.

Every test talks to real `emotion serve` processes on 127.0.0.1; the demo is
only ever a client of them, so these tests check what a visitor would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import EMOTION, TESTS, StartServer, subprocess_env
from support.sample_models import SquaresModel
from support.served import Served, free_port, start_serving

pytest.importorskip("gradio", reason="the demo extra is not installed: pip install '.[demo]'")

import gradio as gr
from gradio_client import Client as GradioClient
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageChops, ImageDraw

from emotion import Client
from emotion.client.demo import Demo, FrameRate, faces_table
from emotion.client.live import LiveStream
from emotion.client.predict import response_to_dict
from emotion.config import DemoOptions

# Gradio's usage summary, kept even with analytics off, trips pandas 3's deprecations.
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

FIXTURES = TESTS / "fixtures"
ASTRONAUT = FIXTURES / "astronaut.jpg"
GROUP = FIXTURES / "group.jpg"
# The README's screenshot is remade on request only (EMOTION_DEMO_SCREENSHOT=docs/demo.png),
# so that a test run leaves the checkout as it was.
SCREENSHOT = os.environ.get("EMOTION_DEMO_SCREENSHOT")
MOCK = "emotion.models.mock:MockModel"


@contextlib.asynccontextmanager
async def serving(log: Path, *args: str) -> AsyncIterator[Served]:
    """`emotion serve --workers 1 ARGS`, its log in a file: a long run never blocks on a pipe."""
    with log.open("wb") as sink:
        served = await start_serving("--workers", "1", *args, stderr=sink)
    try:
        yield served
    finally:
        await served.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mock_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    log = tmp_path_factory.mktemp("mock") / "serve.log"
    async with serving(log, "--port", "0", "--model", MOCK) as served:
        yield served


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fer_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    async with serving(tmp_path_factory.mktemp("fer") / "serve.log", "--port", "0") as served:
        yield served


@pytest.fixture
def open_demo(tmp_path: Path) -> Iterator[Any]:
    """Launch demos on free ports; returns a gradio_client for each. All are closed after."""
    demos: list[Demo] = []

    def launch(target: str, **options: Any) -> GradioClient:
        demo = Demo(DemoOptions(target=target, port=free_port(), **options))
        demos.append(demo)
        demo.launch(block=False)
        return GradioClient(
            f"http://127.0.0.1:{demo.options.port}/",
            verbose=False,
            analytics_enabled=False,
            download_files=str(tmp_path),
        )

    yield launch
    for demo in demos:
        demo.close()


async def predict(page: GradioClient, image: Path) -> Any:
    """The demo's /predict for ``image``, called off the event loop (gradio_client blocks)."""
    return await asyncio.to_thread(page.predict, handle_file(str(image)), api_name="/predict")


def emotion_predict(target: str, *images: Path, annotate: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [*EMOTION, "predict", "--target", target, "--annotate", str(annotate), *map(str, images)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.subprocess
def test_importing_emotion_does_not_import_gradio() -> None:
    code = "import emotion, emotion.cli, sys; assert 'gradio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(), timeout=60)


@pytest.mark.subprocess
def test_without_the_extra_one_line_says_what_to_install() -> None:
    # None in sys.modules makes `import gradio` fail as if it were not installed.
    code = (
        "import sys; sys.modules['gradio'] = None; "
        "from emotion.cli import main; sys.exit(main(['demo']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env()
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert "pip install 'emotion[demo]'" in done.stderr


@pytest.mark.subprocess
def test_predict_api_gives_the_faces_and_drawing_of_emotion_predict(
    fer_server: Served, open_demo: Any, tmp_path: Path
) -> None:
    page = open_demo(fer_server.target)
    printed = emotion_predict(fer_server.target, ASTRONAUT, GROUP, annotate=tmp_path / "drawn")

    for image, line in zip([ASTRONAUT, GROUP], printed, strict=True):
        drawn, faces = page.predict(handle_file(str(image)), api_name="/predict")

        assert faces == {"faces": line["faces"]}
        expected = Image.open(tmp_path / "drawn" / f"{image.stem}.png")
        assert ImageChops.difference(Image.open(drawn).convert("RGB"), expected).getbbox() is None
    (astronaut,) = printed[0]["faces"]
    assert max(astronaut["expression"], key=astronaut["expression"].get) == "happiness"
    assert len(printed[1]["faces"]) == 4


@pytest.mark.subprocess
def test_predict_api_with_the_mock_model_matches_the_client(
    mock_server: Served, open_demo: Any
) -> None:
    page = open_demo(mock_server.target)

    async def direct() -> dict[str, Any]:
        async with Client(mock_server.target) as client:
            return response_to_dict(ASTRONAUT, await client.predict(ASTRONAUT.read_bytes()))

    _, faces = page.predict(handle_file(str(ASTRONAUT)), api_name="/predict")

    assert faces == {"faces": asyncio.run(direct())["faces"]}


def test_the_table_has_a_row_per_face_with_its_box_confidence_and_top_expression() -> None:
    expression = dict.fromkeys(
        ["neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"], 0.0
    )
    face = {
        "bbox": {"x1": 1.4, "y1": 2.0, "x2": 30.6, "y2": 40.0},
        "expression": {**expression, "happiness": 0.75, "neutral": 0.25},
    }

    rows = faces_table({"faces": [{**face, "confidence": 0.9134}, face]})

    assert rows[0][:4] == ["1", "1, 2, 31, 40", "91%", "happiness 75%"]
    assert rows[0][4] == "25.0%"
    assert rows[1][:4] == ["2", "1, 2, 31, 40", "", "happiness 75%"]  # a model that gives none
    assert faces_table(None) == []


@pytest.mark.subprocess
def test_files_the_server_cannot_use_are_explained(
    mock_server: Served, open_demo: Any, tmp_path: Path
) -> None:
    page = open_demo(mock_server.target)
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(17 * 1024 * 1024))

    with pytest.raises(AppError, match="cannot read this as an image"):
        page.predict(handle_file(str(text)), api_name="/predict")
    with pytest.raises(AppError, match=r"This file is 17\.0 MiB; the server takes images up to"):
        page.predict(handle_file(str(huge)), api_name="/predict")
    _, faces = page.predict(handle_file(str(ASTRONAUT)), api_name="/predict")
    assert len(faces["faces"]) == 1


@pytest.mark.subprocess
async def test_a_refused_token_is_explained(open_demo: Any, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("right-token\n")
    log = tmp_path / "serve.log"
    async with serving(log, "--port", "0", "--model", MOCK, "--auth-tokens-file", str(tokens)) as s:
        wrong = open_demo(s.target, token="wrong-token")
        right = open_demo(s.target, token="right-token")

        with pytest.raises(AppError, match="refused this demo's token"):
            await predict(wrong, ASTRONAUT)
        _, faces = await predict(right, ASTRONAUT)
        assert len(faces["faces"]) == 1


@pytest.mark.subprocess
async def test_a_stopped_server_is_explained_and_the_page_recovers(
    open_demo: Any, tmp_path: Path
) -> None:
    port = free_port()
    page = open_demo(f"127.0.0.1:{port}")

    with pytest.raises(AppError, match=rf"Cannot reach the emotion server at 127\.0\.0\.1:{port}"):
        await predict(page, ASTRONAUT)
    async with serving(tmp_path / "serve.log", "--port", str(port), "--model", MOCK):
        _, faces = await predict(page, ASTRONAUT)
        assert len(faces["faces"]) == 1
    with pytest.raises(AppError, match="Cannot reach the emotion server"):
        await predict(page, ASTRONAUT)


@pytest.mark.subprocess
async def test_webcam_frames_are_drawn_with_the_rate_and_failures_go_to_the_status(
    mock_server: Served,
) -> None:
    demo = Demo(DemoOptions(target=mock_server.target))
    rate = FrameRate()
    try:
        for _ in range(3):
            drawn, status, rate = await demo.frame(str(ASTRONAUT), rate)
            assert isinstance(drawn, Image.Image)
        assert re.fullmatch(rf"\d+\.\d frames/s answered by `{mock_server.target}`", status)
    finally:
        await demo.aclose()

    down = Demo(DemoOptions(target=f"127.0.0.1:{free_port()}"))
    try:
        drawn, status, _ = await down.frame(str(ASTRONAUT), rate)
    finally:
        await down.aclose()
    assert isinstance(drawn, type(gr.skip()))
    assert "Cannot reach the emotion server" in status


async def test_webcam_frames_go_down_one_tracked_stream_and_a_failure_opens_a_new_one(
    start_server: StartServer, tmp_path: Path
) -> None:
    # A large square, then a small one joins: SquaresModel lists the small one
    # first, so only a stream that remembers the first frame gives it id 2.
    server = await start_server(SquaresModel())
    frames = []
    for index, squares in enumerate([[(20, 60)], [(20, 60), (150, 30)], [(22, 60), (150, 30)]]):
        image = Image.new("RGB", (300, 200))
        for (x, size), colour in zip(squares, [(255, 0, 0), (0, 0, 255)], strict=False):
            ImageDraw.Draw(image).rectangle((x, 20, x + size, 20 + size), fill=colour)
        frames.append(tmp_path / f"{index}.png")
        image.save(frames[-1])
    demo = Demo(DemoOptions(target=f"127.0.0.1:{server.port}"))
    live, rate = LiveStream(), FrameRate()
    seen = []
    try:
        for frame in frames:
            drawn, _, rate = await demo.frame(str(frame), rate, live)
            assert isinstance(drawn, Image.Image)
            assert live.last is not None
            assert all(f.smoothed_expression is not None for f in live.last.response)
            seen.append([f.track_id for f in live.last.response])
        await live.aclose()  # as a failed frame does: the next frame opens a new call
        await demo.frame(str(frames[1]), rate, live)
        assert live.last is not None
        seen.append([f.track_id for f in live.last.response])
    finally:
        await live.aclose()
        await demo.aclose()
    assert seen == [[1], [2, 1], [2, 1], [1, 2]]


def test_frame_rate_counts_answers_over_a_sliding_window() -> None:
    rate = FrameRate(window=1.0)

    assert rate.tick(10.0) == 0.0
    assert [rate.tick(10.0 + n / 10) for n in range(1, 6)][-1] == pytest.approx(10.0)
    assert rate.tick(20.0) == 0.0  # the earlier answers left the window


def wait_for_page(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Return once ``url`` answers 200 (not when the log says so); fail if ``process`` exits."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, no proxy
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError), direct.open(url, timeout=5) as page:
            if page.status == 200:
                return
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium, kept off the internet: no sync, updates or background requests."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver (CI does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.mark.subprocess
def test_the_page_in_a_browser_shows_the_drawing_and_the_table(
    fer_server: Served, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as sink:
        demo = subprocess.Popen(
            [*EMOTION, "demo"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=subprocess_env(EMOTION_TARGET=fer_server.target, EMOTION_DEMO_PORT=str(port)),
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_page(url, demo, log)
        wait = WebDriverWait(browser, 30)

        def show(image: Path) -> list[str]:
            """Upload ``image`` on a fresh page; the face table's rows once it is filled in."""
            browser.get(url)
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
            browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(image))
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#annotated img[src]"))
            wait.until(lambda b: "%" in b.find_element(By.ID, "faces").text)
            # The table is an ARIA grid; its first row holds the headings.
            rows = browser.find_elements(By.CSS_SELECTOR, "#faces [role=row]")
            return [row.text for row in rows if row.get_attribute("aria-rowindex") != "1"]

        (astronaut,) = show(ASTRONAUT)
        assert "happiness" in astronaut
        group = show(GROUP)
        assert len(group) == 4
        assert sum("happiness" in row for row in group) == 2
        assert browser.save_screenshot(str(SCREENSHOT or tmp_path / "demo.png"))
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource').map(entry => entry.name)"
        )
        outside = [name for name in fetched if not name.startswith((url, "data:", "blob:"))]
        assert outside == [], "the page asked for something off this machine"
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(15)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
