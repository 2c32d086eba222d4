"""Several server processes on one port, kept alive by a parent that owns no socket traffic.

grpclib serves from one thread, and Python runs one core per process, so using
every core takes processes. Each worker (emotion.supervision.worker) is a complete server
(health, drain, limits) listening with SO_REUSEPORT; the kernel spreads
connections across them. Decoding and the model run in inference processes
(emotion.inference.process_pool) that the parent owns and every worker shares, or without them
in each worker's threads. The parent only starts, watches and stops them:

- it binds the port first (without listening), so a port in use or port 0
  is settled once and every worker gets the same number;
- it waits until every worker serves (the inference processes, if any,
  having loaded the model), and exits non-zero if one cannot; then it writes
  the port file, if asked for one;
- it restarts a worker or an inference process that dies, backing off while
  restarts keep failing;
- it turns SIGTERM and SIGINT into SIGTERM for every worker, which drain; a
  second signal cuts their grace period short;
- it passes SIGHUP on to every worker, which reads its TLS and token files
  again.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING

from emotion.config import ServeOptions
from emotion.inference.process_pool import InferencePool, StartFailed
from emotion.model import ModelLoadError, load_model
from emotion.observability.environment import tracing_available
from emotion.observability.metrics import (
    MULTIPROCESS_DIR,
    forget_process,
    multiprocess_registry,
    serve_metrics,
)
from emotion.runtime import available_cpus, exit_reason, write_port_file
from emotion.serving.sockets import format_address, reserved_socket
from emotion.serving.wiring import Wiring
from emotion.supervision.worker import CannotServe, Serving, worker_main

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess


log = logging.getLogger(__name__)


class WorkersFailed(Exception):
    """Workers could not start, or kept dying; the message says why."""


@dataclass
class _Worker:
    slot: int
    process: BaseProcess
    messages: Connection
    serving: bool = False


def inference_process_count(options: ServeOptions) -> int:
    """The inference processes ``options`` asks for: its count, else one per CPU.

    Unset, it is 0 (threads) with batching: batches form in a worker's threads.
    """
    if options.inference_processes is not None:
        return options.inference_processes
    return 0 if options.server.max_batch_size > 1 else available_cpus()


class Supervisor:
    """Runs ``count`` workers serving ``spec`` and keeps them running until told to stop."""

    def __init__(
        self,
        options: ServeOptions,
        *,
        log_format: str = logging.BASIC_FORMAT,
        max_failed_restarts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.options = options
        self.config = options.server
        self.count = options.workers or available_cpus()
        self.inference_processes = inference_process_count(options)
        self.log_format = log_format
        #: Restarts in a row of workers that die before serving, before giving up.
        self.max_failed_restarts = max_failed_restarts
        #: Delay before the first such restart; it doubles up to max_backoff.
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._signals = 0
        self._stopping = False
        self._failed_restarts = 0
        self._restart_at: dict[int, float] = {}
        self._last_signal = ""
        self._reloads = 0
        self._reloads_forwarded = 0
        #: Where the workers' summed metrics are served, once running.
        self.metrics_port: int | None = None
        #: The inference processes every worker shares (--inference-processes).
        self._pool: InferencePool | None = None
        #: The model's name, for workers that leave the model to the processes.
        self._model_name: str | None = None
        #: Whether workers trace: decided (and warned about) once, not by each worker.
        self._traced = False

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT and every worker has drained.

        Raises WorkersFailed when the workers cannot start or keep dying.
        """
        # Bound, not listening: the port is ours and known before the workers start.
        reservation = reserved_socket(self.config.host, self.config.port)
        port = reservation.getsockname()[1]
        self._traced = tracing_available()
        metrics_port = self.config.metrics_port
        self.config = replace(self.config, port=port, metrics_port=None)
        self._wiring = Wiring(reuse_port=True, record_metrics=metrics_port is not None)
        metrics_dir = None
        metrics_server = None
        if metrics_port is not None:
            # Workers write their numbers into files here; this process adds them up.
            metrics_dir = tempfile.mkdtemp(prefix="emotion-metrics-")
            os.environ[MULTIPROCESS_DIR] = metrics_dir
            metrics_server = serve_metrics(
                self.config.host, metrics_port, multiprocess_registry(metrics_dir)
            )
            self.metrics_port = int(metrics_server.server_port)
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_reload)
        try:
            self._start_pool()
            for slot in range(self.count):
                self._start(slot)
            self._wait_until_serving()
            if self.options.port_file is not None and not self._stopping:
                write_port_file(self.options.port_file, port)
            log.info(
                "%d workers serving on %s (pids %s)%s",
                self.count,
                format_address(self.config.host, port),
                " ".join(str(w.process.pid) for w in self._workers.values()),
                ""
                if self.metrics_port is None
                else f"; metrics on {format_address(self.config.host, self.metrics_port)}",
            )
            self._supervise()
        finally:
            self._stop_all()
            if self._pool is not None:
                self._pool.close()
            reservation.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            if metrics_dir is not None:
                os.environ.pop(MULTIPROCESS_DIR, None)
                shutil.rmtree(metrics_dir, ignore_errors=True)

    def _start_pool(self) -> None:
        """Start the inference processes, which the workers connect to once they listen."""
        if not self.inference_processes:
            return
        try:  # a wrong --model fails here, before any process starts
            self._model_name = load_model(self.options.model).name
        except ModelLoadError as exc:
            raise WorkersFailed(str(exc)) from exc
        self._pool = InferencePool(
            self.options.model,
            self.inference_processes,
            max_pixels=self.config.limits.max_pixels,
            log_level=self.options.log_level,
        )
        self._pool.launch()
        self._wiring = replace(self._wiring, inference_sockets=self._pool.paths)

    def _pool_started(self) -> bool:
        """Whether the inference processes (if any) have loaded the model; raises if one cannot."""
        if self._pool is None:
            return True
        try:
            return self._pool.started()
        except StartFailed as exc:
            raise WorkersFailed(str(exc)) from exc

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals += 1
        self._stopping = True
        self._last_signal = signal.Signals(signum).name

    def _on_reload(self, signum: int, frame: object) -> None:
        self._reloads += 1

    def _forward_reloads(self) -> None:
        """Pass a SIGHUP on to the workers; one that starts meanwhile reads the new files."""
        if self._reloads == self._reloads_forwarded:
            return
        self._reloads_forwarded = self._reloads
        if self._stopping:  # a worker past its server has SIGHUP's default back: death
            return
        log.info("received SIGHUP; workers read their TLS and token files again")
        self._signal_all(signal.SIGHUP)

    def _start(self, slot: int) -> None:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(
                self.options,
                self.config,
                self._wiring_for(slot),
                send,
                self.log_format,
                self._model_name,
                self._traced,
            ),
            name=f"emotion-worker-{slot}",
            daemon=False,
        )
        # Started with SIGHUP blocked, so that one passed on before the worker
        # handles it cannot kill it (the default); the worker unblocks it.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        send.close()
        self._workers[slot] = _Worker(slot, process, receive)

    def _wiring_for(self, slot: int) -> Wiring:
        """How worker ``slot`` joins the others: its inference processes listed from its own on."""
        paths = worker_paths(self._wiring.inference_sockets, slot)
        return replace(self._wiring, inference_sockets=paths)

    def _wait_until_serving(self) -> None:
        pool_ready = False
        while not all(w.serving for w in self._workers.values()):
            if self._stopping:
                log.info("all workers stopped")
                return
            self._forward_reloads()
            # The workers listen meanwhile, answering health checks NOT_SERVING.
            if pool_ready:
                if self._pool is not None:
                    self._pool.check()
            elif self._pool_started():
                pool_ready = True
                if self._pool is not None:
                    log.info(
                        "%d inference processes ready (pids %s)",
                        self._pool.count,
                        " ".join(str(pid) for pid in self._pool.pids),
                    )
            for worker in self._ready_to_read(timeout=0.2):
                message = self._read(worker)
                if message is None or isinstance(message, CannotServe):
                    reason = (
                        message.reason
                        if message
                        else f"exited ({exit_reason(worker.process.exitcode)})"
                    )
                    raise WorkersFailed(f"worker {worker.slot} failed to start: {reason}")

    def _supervise(self) -> None:
        forwarded = 0
        while True:
            if self._signals > forwarded:
                forwarded = self._signals
                if forwarded == 1:
                    log.info("received %s; draining %d workers", self._last_signal, self.count)
                else:
                    log.warning(
                        "received %s again; workers cancel in-flight calls", self._last_signal
                    )
                self._signal_all(signal.SIGTERM)
            if self._stopping and not any(w.process.is_alive() for w in self._workers.values()):
                log.info("all workers stopped")
                return
            self._forward_reloads()
            for worker in self._ready_to_read(timeout=0.2):
                message = self._read(worker)
                if isinstance(message, CannotServe) and not worker.serving:
                    log.error("worker %d failed to start: %s", worker.slot, message.reason)
            if self._stopping:
                continue
            if self._pool is not None:
                self._pool.check()
            now = time.monotonic()
            for worker in list(self._workers.values()):
                if worker.process.is_alive():
                    continue
                worker.process.join()
                if worker.slot not in self._restart_at:
                    if worker.process.pid is not None:
                        forget_process(worker.process.pid)
                    self._note_death(worker)
                if now >= self._restart_at[worker.slot]:
                    del self._restart_at[worker.slot]
                    worker.messages.close()
                    self._start(worker.slot)

    def _note_death(self, worker: _Worker) -> None:
        if worker.serving:
            self._failed_restarts = 0
        else:
            self._failed_restarts += 1
            if self._failed_restarts > self.max_failed_restarts:
                raise WorkersFailed(
                    f"worker {worker.slot} died {self._failed_restarts} times in a row "
                    f"before serving ({exit_reason(worker.process.exitcode)}); giving up"
                )
        delay = 0.0
        if self._failed_restarts:
            delay = min(self.max_backoff, self.backoff * 2 ** (self._failed_restarts - 1))
        log.warning(
            "worker %d (pid %s) %s; restarting%s",
            worker.slot,
            worker.process.pid,
            f"exited ({exit_reason(worker.process.exitcode)})",
            f" in {delay:.1f}s" if delay else "",
        )
        self._restart_at[worker.slot] = time.monotonic() + delay

    def _ready_to_read(self, timeout: float) -> list[_Worker]:
        by_connection = {w.messages: w for w in self._workers.values() if not w.messages.closed}
        ready = wait(list(by_connection), timeout=timeout)
        return [by_connection[c] for c in ready if isinstance(c, Connection)]

    def _read(self, worker: _Worker) -> Serving | CannotServe | None:
        """The worker's next message, or None once it has exited."""
        try:
            message = worker.messages.recv()
        except (EOFError, OSError):
            worker.messages.close()
            worker.process.join(timeout=5)
            return None
        if not isinstance(message, Serving | CannotServe):
            raise TypeError(f"worker {worker.slot} sent {message!r}")
        if isinstance(message, Serving):
            worker.serving = True
            if self._failed_restarts:
                self._failed_restarts = 0
        return message

    def _signal_all(self, signum: int) -> None:
        for worker in self._workers.values():
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signum)

    def _stop_all(self) -> None:
        """Ask every worker to drain, then wait for it; kill what outlives the grace."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace + 10
        for worker in self._workers.values():
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("worker %d did not stop in time; killing it", worker.slot)
                worker.process.kill()
                worker.process.join()
            worker.messages.close()


def worker_paths(paths: tuple[str, ...], slot: int) -> tuple[str, ...]:
    """The inference processes' ``paths`` as worker ``slot`` lists them: from its own on.

    A worker sends an image to the first of its least loaded processes
    (emotion.inference.process_client): calls that come one at a time stay on one process,
    and workers that each have one go to different ones.
    """
    if not paths:
        return paths
    first = slot % len(paths)
    return paths[first:] + paths[:first]
