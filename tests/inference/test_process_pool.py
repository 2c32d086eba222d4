"""The inference pool: processes that load the model, listen at their paths and are replaced."""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import encode
from PIL import Image
from support.served import alive, inference_processes_in

from emotion import Response
from emotion.config.limits import DEFAULT_MAX_PIXELS
from emotion.contract import ModelDescription
from emotion.inference.process_main import ANSWER, REQUEST, STEPS, Status, Steps
from emotion.inference.process_pool import InferencePool, StartFailed

# Every test here starts processes.
pytestmark = pytest.mark.subprocess

Pool = Callable[..., InferencePool]


@pytest.fixture
def pool() -> Iterator[Pool]:
    """Make pools of a sample model; each is closed after the test."""
    made: list[InferencePool] = []

    def make(model: str, count: int = 1) -> InferencePool:
        made.append(
            InferencePool(f"support.sample_models:{model}", count, max_pixels=DEFAULT_MAX_PIXELS)
        )
        return made[-1]

    yield make
    for each in made:
        each.close()


def connected(path: str) -> socket.socket:
    """A connection to the process at ``path``, once it says READY, as a worker makes it."""
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(30)
    conn.connect(path)
    status, size = ANSWER.unpack(conn.recv(ANSWER.size, socket.MSG_WAITALL))
    assert status == Status.OK
    # What the model is, as the worker's Describe answers it.
    assert ModelDescription.parse(conn.recv(size, socket.MSG_WAITALL)).name
    return conn


def ask(path: str, image: bytes) -> tuple[Status, bytes, Steps]:
    """One request to the process at ``path``, as a worker sends it."""
    with connected(path) as conn:
        conn.sendall(REQUEST.pack(0.0, 0, len(image)) + image)
        head = conn.recv(ANSWER.size + STEPS.size, socket.MSG_WAITALL)
        status, size = ANSWER.unpack_from(head)
        steps = Steps._make(STEPS.unpack_from(head, ANSWER.size))
        return Status(status), conn.recv(size, socket.MSG_WAITALL), steps


def answered_by(path: str, image: bytes) -> int:
    status, payload, _ = ask(path, image)
    assert status is Status.OK
    box = Response.parse(payload).response[0].bbox
    assert box is not None
    return int(box.x1)


def wait_for(condition: Callable[[], bool], pool: InferencePool, seconds: float = 30) -> None:
    """Call ``pool.check()`` as a supervisor does, until ``condition`` holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        pool.check()
        time.sleep(0.05)


def test_each_process_loads_the_model_and_answers_at_its_own_path(pool: Pool, jpeg: bytes) -> None:
    two = pool("PidModel", 2)

    two.start()

    assert len(set(two.pids)) == 2
    assert os.getpid() not in two.pids
    assert all(stat.S_ISSOCK(os.stat(path).st_mode) for path in two.paths)
    assert stat.S_IMODE(os.stat(os.path.dirname(two.paths[0])).st_mode) == 0o700
    assert {answered_by(path, jpeg) for path in two.paths} == set(two.pids)


def test_an_image_larger_than_the_sockets_buffer_is_read_whole(pool: Pool) -> None:
    one = pool("SizeModel")
    one.start()
    # Noise does not compress: several MiB, which arrive in many reads.
    big = encode(Image.frombytes("RGB", (1600, 1200), os.urandom(1600 * 1200 * 3)), "JPEG")
    with socket.socket(socket.AF_UNIX) as probe:
        assert len(big) > 4 * probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    status, payload, _ = ask(one.paths[0], big)

    assert status is Status.OK
    box = Response.parse(payload).response[0].bbox
    assert box is not None
    assert (box.x2, box.y2) == (1600, 1200)


def test_each_answer_says_when_its_decode_and_model_ran(
    pool: Pool, jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOTION_TEST_SECONDS", "0.05")
    one = pool("SlowModel")
    one.start()

    before = time.time_ns()
    status, _, steps = ask(one.paths[0], jpeg)
    after = time.time_ns()
    bad, _, bad_steps = ask(one.paths[0], b"not an image")

    assert status is Status.OK
    assert before < steps.decode_start <= steps.decode_end <= steps.model_start
    assert steps.model_start < steps.model_end < after
    assert steps.model_end - steps.model_start >= 50_000_000  # SlowModel's 0.05 s
    assert bad is Status.INVALID_IMAGE
    assert bad_steps.decode_start <= bad_steps.decode_end
    assert (bad_steps.model_start, bad_steps.model_end) == (0, 0)


def environment(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def test_processes_keep_freed_memory_at_hand_unless_the_operator_says_otherwise(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = pool("PidModel")
    default.start()
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    operators = pool("PidModel")
    operators.start()

    assert environment(default.pids[0])["MALLOC_TOP_PAD_"] == str(16 * 1024 * 1024)
    assert environment(operators.pids[0])["MALLOC_TOP_PAD_"] == "0"


def test_closing_ends_the_processes_and_removes_their_paths(pool: Pool) -> None:
    two = pool("PidModel", 2)
    two.start()
    pids = two.pids

    two.close()

    assert not [pid for pid in pids if alive(pid)]
    assert not Path(two.paths[0]).parent.exists()


def test_a_model_that_cannot_load_fails_the_start_with_its_reason_and_leaves_nothing(
    pool: Pool,
) -> None:
    two = pool("FailingLoadModel", 2)

    with pytest.raises(StartFailed, match=r"FileNotFoundError: weights\.bin is missing"):
        two.start()

    assert inference_processes_in(Path(two.paths[0]).parent) == set()
    assert not Path(two.paths[0]).parent.exists()


def test_closing_kills_a_process_that_does_not_end_when_its_socket_closes(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOTION_TEST_SECONDS", "60")
    one = pool("SlowLoadModel")  # loading, it does not watch its owner's socket
    one.launch()
    folder = Path(one.paths[0]).parent
    deadline = time.monotonic() + 10
    while not inference_processes_in(folder):  # its command line shows once exec is done
        assert time.monotonic() < deadline, "the process never started"
        time.sleep(0.01)

    one.close()

    left = inference_processes_in(folder)
    for pid in left:  # a failed test leaves nothing running
        os.kill(pid, signal.SIGKILL)
    assert left == set()


def test_a_process_that_dies_is_replaced_at_the_same_path(
    pool: Pool, jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    one = pool("PidModel")
    one.start()
    [first] = one.pids
    caplog.set_level(logging.WARNING, "emotion.inference.process_pool")

    os.kill(first, signal.SIGKILL)
    wait_for(lambda: bool(one.pids) and one.pids != [first], one)

    [second] = one.pids
    assert answered_by(one.paths[0], jpeg) == second
    assert f"inference process {first} exited (killed by SIGKILL); starting another in 0.5s" in (
        caplog.text
    )


def test_a_replacement_that_cannot_load_is_logged_and_tried_again_later(
    pool: Pool,
    jpeg: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fail = tmp_path / "fail"
    monkeypatch.setenv("EMOTION_TEST_FAIL_FILE", str(fail))
    one = pool("CrashingModel")
    one.start()
    [first] = one.pids
    caplog.set_level(logging.WARNING, "emotion.inference.process_pool")

    fail.touch()  # CrashingModel's load() fails while this file exists
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: caplog.text.count("told to fail by the test") >= 3, one)
    failures = [r for r in caplog.records if "told to fail" in r.getMessage()]
    fail.unlink()
    wait_for(lambda: bool(one.pids), one)

    # Starts that keep failing back off: 0.5 s, then 1 s, then 2 s.
    delays = [float(r.getMessage().rsplit(" ", 1)[1].rstrip("s")) for r in failures[:3]]
    assert delays == [0.5, 1.0, 2.0]
    assert failures[1].created - failures[0].created >= 0.5
    assert failures[2].created - failures[1].created >= 1.0
    assert answered_by(one.paths[0], jpeg) == one.pids[0] != first


def answers_waiting(conn: socket.socket) -> int:
    """How many whole answers ``conn`` has received and not yet read."""
    waiting = conn.recv(1 << 20, socket.MSG_DONTWAIT)
    count = 0
    head = ANSWER.size + STEPS.size
    while len(waiting) >= head:
        _, size = ANSWER.unpack_from(waiting)
        if len(waiting) < head + size:
            break
        waiting = waiting[head + size :]
        count += 1
    return count


def test_a_process_takes_its_connections_in_turn(
    pool: Pool, jpeg: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    monkeypatch.setenv("EMOTION_TEST_SECONDS", "0.3")
    monkeypatch.setenv("EMOTION_TEST_MARKER", str(started))
    one = pool("SlowModel")
    one.start()
    with connected(one.paths[0]) as busy, connected(one.paths[0]) as other:
        request = REQUEST.pack(0.0, 0, len(jpeg)) + jpeg
        busy.sendall(request * 3)
        while not started.exists():  # the first of busy's three is running
            time.sleep(0.01)
        other.sendall(request)

        status, _ = ANSWER.unpack_from(other.recv(ANSWER.size + STEPS.size, socket.MSG_WAITALL))
        busy_answered = answers_waiting(busy)

    # Not after all of busy's: a worker with many images cannot starve another.
    assert status == Status.OK
    assert busy_answered in {1, 2}


def test_a_connection_that_stalls_half_way_through_an_image_is_cut_off(
    pool: Pool, jpeg: bytes
) -> None:
    one = pool("PidModel")
    one.start()
    with connected(one.paths[0]) as stalled:
        stalled.sendall(REQUEST.pack(0.0, 0, len(jpeg)) + jpeg[: len(jpeg) // 2])
        started = time.monotonic()

        cut_off = stalled.recv(1)  # blocks until the process closes it

        waited = time.monotonic() - started
    # Cut off after its 10 s, without an answer; the process serves on.
    assert cut_off == b""
    assert 9 < waited < 20
    assert answered_by(one.paths[0], jpeg) == one.pids[0]
