"""`emotion demo`: a browser page that shows a running `emotion serve` at work.

The page is an honest client of the service: every answer comes over gRPC
through :class:`emotion.Client`, so what it shows is what any client gets, and
it never loads a model itself. This is the only module that imports Gradio
(the optional extra ``demo``), which keeps the core install small.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import gradio as gr
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from PIL import Image

from emotion.client.annotate import annotate, top_expression
from emotion.client.client import Client
from emotion.client.live import LiveStream
from emotion.client.predict import response_to_dict
from emotion.config import DEFAULT_MAX_IMAGE_SIZE, DemoOptions, RetryPolicy
from emotion.contract import EXPRESSION_FIELDS, Response
from emotion.decode import InvalidImage, decode_image

log = logging.getLogger(__name__)

#: A person watches the page: a server that went away is said so within 2 s,
#: not after the 10 s a program's call waits for a restart.
_PAGE_RETRY = RetryPolicy(wait_for_server=2.0)

#: Columns of the face table: where, how sure, what, and the seven probabilities.
TABLE_HEADERS = [
    "face",
    "box (x1, y1, x2, y2)",
    "confidence",
    "expression",
    *EXPRESSION_FIELDS,
]


class FrameRate:
    """Webcam frames answered per second, over the last few seconds.

    A sliding window rather than a running mean, so the figure follows the
    server when it speeds up or slows down.
    """

    def __init__(self, window: float = 3.0) -> None:
        self.window = window
        self._times: collections.deque[float] = collections.deque()

    def tick(self, now: float | None = None) -> float:
        """Count one answered frame; return the rate including it."""
        now = time.monotonic() if now is None else now
        self._times.append(now)
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])


class Refused(Exception):
    """An upload that cannot be shown; the message is written for the person at the page."""


class Demo:
    """The Gradio app and the one gRPC client it shares across visitors.

    The client is made on first use, on the event loop Gradio runs its
    handlers on, and reconnects by itself once a stopped server is back.
    """

    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.blocks = self._build()

    # -- answers ---------------------------------------------------------

    async def predict(
        self, upload: dict[str, Any] | None
    ) -> tuple[Image.Image | None, dict[str, Any] | None]:
        """The upload handler, and the `/predict` API: (annotated image, faces as JSON).

        It takes the uploaded file as it came (Gradio's own reading is off for
        this event): Gradio would turn a file that is not an image into a bare
        "Error", while the server judges it as it does for `emotion predict`,
        and the page can say why.
        """
        path = None if upload is None else upload.get("path")
        if path is None:
            return None, None
        try:
            data = await asyncio.to_thread(Path(path).read_bytes)
            picture, response = await self._answer(data)
        except Refused as exc:
            log.warning("%s", exc)
            raise gr.Error(
                str(exc), duration=None, title="Cannot show this image", print_exception=False
            ) from None
        faces = response_to_dict(Path(path), response)["faces"]
        if not faces:
            gr.Info("No face found in this image.")
        return picture, {"faces": faces}

    async def frame(
        self, path: str | None, rate: FrameRate, live: LiveStream | None = None
    ) -> tuple[Image.Image | None, str, FrameRate]:
        """One webcam frame: drawn, with the rate achieved so far.

        Gradio keeps only the newest frame while this runs, so a slow server
        sees frames dropped, never a growing queue. Failures go to the status
        line and the stream carries on, picking up once the server is back.
        With the session's ``live`` stream, each face is drawn in its track's
        colour with its id and smoothed expression.
        """
        if path is None:
            return None, "", rate
        try:
            data = await asyncio.to_thread(Path(path).read_bytes)
            picture, _ = await self._answer(data, live)
        except Refused as exc:
            return gr.skip(), f"**{exc}**", rate
        return picture, f"{rate.tick():.1f} frames/s answered by `{self.options.target}`", rate

    async def _answer(
        self, data: bytes, live: LiveStream | None = None
    ) -> tuple[Image.Image, Response]:
        """Ask the server about ``data``; draw its answer. Raises Refused with the reason."""
        client = self._connect()
        try:
            if live is None:
                response = await client.predict(data)
            else:
                response = await live.answer(client, data, self.options.timeout)
        except ValueError:  # over the server's limit: refused before sending
            raise Refused(
                f"This file is {data_size(len(data))}; the server takes images up to "
                f"{data_size(client.max_image_size)}."
            ) from None
        except Exception as exc:
            reason = explain(exc, self.options.target, self.options.timeout)
            if reason is None:
                raise
            raise Refused(reason) from None
        try:
            picture = await asyncio.to_thread(_draw, data, response)
        except InvalidImage as exc:
            raise Refused(
                f"The server answered, but this image cannot be drawn here: {exc}"
            ) from None
        return picture, response

    def _connect(self) -> Client:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            options = self.options
            self._client = Client(
                options.target,
                timeout=options.timeout,
                tls=options.tls,
                token=options.token,
                retry=_PAGE_RETRY,
            )
            self._loop = loop
        return self._client

    # -- the page --------------------------------------------------------

    def _build(self) -> gr.Blocks:
        blocks = gr.Blocks(title="emotion demo", analytics_enabled=False)
        with blocks:
            gr.Markdown(
                "# Facial emotion recognition\n"
                f"Every answer comes from the emotion server at `{self.options.target}` over gRPC."
            )
            with gr.Tab("Upload"):
                with gr.Row():
                    upload = gr.Image(
                        label="Photo",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        elem_id="upload",
                    )
                    drawn = gr.Image(
                        label="Faces found",
                        type="pil",
                        format="png",
                        buttons=["download", "fullscreen"],  # no sharing to a hub
                        elem_id="annotated",
                    )
                table = gr.Dataframe(
                    headers=TABLE_HEADERS,
                    label="Faces",
                    interactive=False,
                    elem_id="faces",
                )
                with gr.Accordion("Raw JSON", open=False):
                    raw = gr.JSON(label="Faces as JSON", elem_id="json")
            with gr.Tab("Webcam"):
                with gr.Row():
                    camera = gr.Image(
                        label="Webcam",
                        type="filepath",
                        sources=["webcam"],
                        streaming=True,
                        elem_id="camera",
                    )
                    live = gr.Image(
                        label="Faces found",
                        type="pil",
                        format="jpeg",
                        buttons=["fullscreen"],
                        elem_id="live",
                    )
                status = gr.Markdown(elem_id="live-status")
                rate = gr.State(FrameRate())
                # One tracked stream per visitor, ended with their session.
                live_stream = gr.State(LiveStream(), delete_callback=LiveStream.close_soon)
            upload.change(
                self.predict,
                inputs=upload,
                outputs=[drawn, raw],
                api_name="predict",
                preprocess=False,
                concurrency_limit=8,
            ).then(faces_table, inputs=raw, outputs=table, queue=False, api_visibility="private")
            camera.stream(
                self.frame,
                inputs=[camera, rate, live_stream],
                outputs=[live, status, rate],
                stream_every=0.1,
                concurrency_limit=16,
                show_progress="hidden",
                api_visibility="private",
            )
        return blocks

    def launch(self, *, block: bool = True) -> None:
        """Serve the page; with ``block``, until Ctrl-C."""
        # Gradio reads this as well as the Blocks argument; no telemetry either way.
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
        self.blocks.launch(
            server_name=self.options.host,
            server_port=self.options.port,
            share=False,
            inbrowser=False,
            ssr_mode=False,
            mcp_server=False,
            show_error=False,
            quiet=True,
            footer_links=["api", "settings"],
            # Larger files get our own message rather than an upload failure.
            max_file_size=4 * DEFAULT_MAX_IMAGE_SIZE,
            prevent_thread_lock=not block,
        )

    async def aclose(self) -> None:
        """Close the connection to the server, from the loop it was opened on."""
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            client.close()

    def close(self) -> None:
        """Close the connection to the server, then stop serving the page."""
        loop = self._loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout=5)
        self.blocks.close()


def explain(exc: BaseException, target: str, timeout: float) -> str | None:
    """What a failed call means for the person at the page; None for the unforeseen."""
    if isinstance(exc, GRPCError):
        detail = (exc.message or exc.status.name).rstrip(".")
        if exc.status is Status.UNAUTHENTICATED or exc.status is Status.PERMISSION_DENIED:
            return (
                f"The server at {target} refused this demo's token ({detail}). "
                "Start `emotion demo` with a --token-file the server accepts."
            )
        if exc.status is Status.INVALID_ARGUMENT:
            return f"The server cannot read this as an image: {detail}."
        if exc.status is Status.RESOURCE_EXHAUSTED:
            return f"The server turned this image away: {detail}."
        if exc.status is Status.DEADLINE_EXCEEDED:
            return f"No answer from {target} within {timeout:g}s."
        if exc.status is Status.UNAVAILABLE:
            return f"The server at {target} is not ready ({detail}); try again in a moment."
        return f"The server at {target} answered {exc.status.name}: {detail}."
    if isinstance(exc, TimeoutError):
        return f"No answer from {target} within {timeout:g}s."
    if isinstance(exc, (OSError, ProtocolError, StreamTerminatedError)):
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return (
            f"Cannot reach the emotion server at {target} ({reason}). "
            "Is `emotion serve` running there? This page works again as soon as it is."
        )
    return None


def faces_table(faces: dict[str, Any] | None) -> list[list[str]]:
    """Rows for the face table from the `/predict` JSON: box, confidence, top expression, scores.

    A model that gives no confidence leaves its cell empty.
    """
    rows = []
    for number, face in enumerate((faces or {}).get("faces", []), start=1):
        box = face["bbox"]
        scores = face["expression"]
        name, score = top_expression(scores)
        confidence = face.get("confidence")
        rows.append(
            [
                str(number),
                ", ".join(f"{box[k]:.0f}" for k in ("x1", "y1", "x2", "y2")),
                "" if confidence is None else f"{confidence:.0%}",
                f"{name} {score:.0%}",
                *(f"{scores[field]:.1%}" for field in EXPRESSION_FIELDS),
            ]
        )
    return rows


def data_size(count: int) -> str:
    """A byte count for people: 17.0 MiB rather than 17825792 bytes."""
    if count < 1024 * 1024:
        return f"{count / 1024:.0f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


def _draw(data: bytes, response: Response) -> Image.Image:
    # The same drawing as `emotion predict --annotate`.
    return annotate(decode_image(data), response)


def run(options: DemoOptions) -> int:
    """`emotion demo`: serve the page until Ctrl-C; 1 if it cannot listen."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    where = (
        f"[{options.host}]:{options.port}"
        if ":" in options.host
        else f"{options.host}:{options.port}"
    )
    demo = Demo(options)
    try:
        demo.launch(block=False)
    except OSError as exc:
        print(f"emotion demo: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1
    print(f"emotion demo: http://{where}/ shows answers from {options.target}", flush=True)
    try:
        demo.blocks.block_thread()
    finally:
        demo.close()
    return 0
