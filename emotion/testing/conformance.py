"""check_model: a model keeps the contract on every kind of image, served as `emotion serve` does.

The model is served behind the real server, in an inference process that
imports it by ``module:Class``, and asked about images of every kind: the
:data:`~emotion.testing.samples.SAMPLES` first, then images hypothesis draws
from the same photographs. Each answer is checked against a table of named
properties (:data:`PROPERTIES`); the first one broken raises ContractBroken,
naming the property, the image and the call that makes it again.

The draws are the same on every run (``seed=0``): a test passes or fails for
a reason. ``seed=None`` and a larger ``examples`` explore further.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Collection, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from emotion.client.client import Client
from emotion.contract import Response
from emotion.model import Model, ModelLoadError, load_model, spec_of
from emotion.serving.server import ModelStartError
from emotion.testing.properties import ANSWER_PROPERTIES, describe, differences
from emotion.testing.samples import SAMPLES, Sample
from emotion.testing.samples import samples as drawn_samples
from emotion.testing.serve import serve_model

T = TypeVar("T")

LOADS = "loads in a fresh process"
ANSWERS = "answers every kind of image"
SAME_TWICE = "the same answer twice"
NO_STATE = "no state kept between calls"
SAME_AS_HERE = "the same answer in an inference process as in this process"

#: Every property check_model checks, by the name its failures give.
PROPERTIES: tuple[str, ...] = (
    LOADS,
    ANSWERS,
    *(answer_property.name for answer_property in ANSWER_PROPERTIES),
    SAME_TWICE,
    NO_STATE,
    SAME_AS_HERE,
)
#: How many of the first samples are compared with the model run in this process.
COMPARED_HERE = 2


class ContractBroken(AssertionError):
    """A model broke one of check_model's properties.

    ``property`` is its name (one of :data:`PROPERTIES`), ``sample`` the image
    it broke on (None for a property of the whole run).
    """

    def __init__(
        self, model: str, broken: str, detail: str, *, sample: Sample | None, reproduce: str
    ) -> None:
        self.property = broken
        self.sample = sample
        lines = [f"model {model} breaks {broken!r}"]
        if sample is not None:
            lines.append(f"  on {sample}")
        lines += [f"  {line}" for line in detail.splitlines()]
        lines.append(f"  reproduce: {reproduce}")
        if sample is not None:
            lines.append(f"  the image: emotion.testing.{sample!r}.encode()")
        super().__init__("\n".join(lines))


def check_model(
    model: Model | str,
    *,
    examples: int = 10,
    seed: int | None = 0,
    samples: Sequence[Sample] | None = None,
    skip: Collection[str] = (),
    timeout: float = 60.0,
) -> None:
    """Serve ``model`` as `emotion serve` does and check that it keeps the contract; blocks.

    ``model`` is an instance or its ``"module:Class"``. Every image of
    SAMPLES is asked, then ``examples`` drawn ones, each twice; the first
    property broken raises :class:`ContractBroken`. ``seed`` fixes the draws
    (None: new ones each run). ``samples`` asks those images instead and draws
    none: a failure's message gives the one to pass to run it again. ``skip``
    names properties not to check, for instance ``"probabilities sum to 1"``
    for a model whose scores are not a distribution, or
    ``"loads in a fresh process"`` to serve the instance itself in threads
    (a model defined in a notebook). ``timeout`` bounds each call.
    """
    unknown = set(skip) - set(PROPERTIES)
    if unknown:
        raise ValueError(f"no such property: {', '.join(sorted(unknown))}; see PROPERTIES")
    __tracebackhide__ = True  # pytest shows the test's line and the message, not this
    instance = load_model(model) if isinstance(model, str) else model
    fixed = tuple(SAMPLES if samples is None else samples)
    with _Loop() as loop:
        run = _Run(instance, frozenset(skip), timeout, loop)
        failure = run.check(fixed, 0 if samples is not None else examples, seed)
    if failure is not None:
        raise failure.with_traceback(None)


class _Loop:
    """An event loop in a thread of its own: check_model blocks, whatever thread calls it."""

    def __enter__(self) -> _Loop:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="check_model")
        self.thread.start()
        return self

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class _Run:
    """One check_model run: the served model, and the answers so far."""

    def __init__(self, model: Model, skip: frozenset[str], timeout: float, loop: _Loop) -> None:
        self.model = model
        self.skip = skip
        self.timeout = timeout
        self.loop = loop
        self.client: Client | None = None
        self.answers: dict[Sample, Response] = {}
        self.asked: list[Sample] = []

    def check(
        self, fixed: Sequence[Sample], examples: int, seed: int | None
    ) -> ContractBroken | None:
        """The first property broken, if any."""
        in_a_process = LOADS not in self.skip
        try:
            with self.served(in_a_process) as self.client:
                failure = _first_failure(self.one, fixed, examples, seed)
                if failure is not None:
                    return failure
                self.again_after_others()
            if in_a_process and SAME_AS_HERE not in self.skip:
                self.same_as_here(fixed[:COMPARED_HERE])
        except ContractBroken as exc:
            return exc
        return None

    @contextlib.contextmanager
    def served(self, in_a_process: bool) -> Iterator[Client]:
        """A client, without retries, of the model served in an inference process or in threads."""

        async def start(stack: contextlib.AsyncExitStack) -> Client:
            served = await stack.enter_async_context(
                serve_model(self.model, inference_processes=int(in_a_process))
            )
            return await stack.enter_async_context(
                Client(served.target, timeout=self.timeout, retry=None)
            )

        stack = contextlib.AsyncExitStack()
        try:
            client = self.loop.run(start(stack))
        except (ModelLoadError, ModelStartError) as exc:
            self.loop.run(stack.aclose())
            if not in_a_process:
                raise
            raise self.broken(LOADS, str(exc), reproduce=self.serve_command()) from None
        try:
            yield client
        finally:
            self.loop.run(stack.aclose())

    def one(self, sample: Sample) -> None:
        data = sample.encode()
        answer = self.ask(sample, data)
        if answer is None:
            return
        for answer_property in ANSWER_PROPERTIES:
            if answer_property.name in self.skip:
                continue
            wrong = list(answer_property.check(answer, sample.shown_size))
            if wrong:
                raise self.broken(answer_property.name, _lines(wrong), sample=sample)
        if SAME_TWICE not in self.skip:
            again = self.ask(sample, data)
            if again is not None and (changed := differences(answer, again)):
                detail = f"asked twice: {describe(answer)}\n then: {describe(again)}"
                raise self.broken(SAME_TWICE, f"{detail}\n{_lines(changed)}", sample=sample)
        self.answers.setdefault(sample, answer)
        self.asked.append(sample)

    def again_after_others(self) -> None:
        """The first image, asked again after all the others, gets its first answer."""
        if NO_STATE in self.skip or len(set(self.asked)) < 2:
            return
        first = self.asked[0]
        again = self.ask(first, first.encode())
        if again is not None and (changed := differences(self.answers[first], again)):
            detail = (
                f"asked first: {describe(self.answers[first])}\n"
                f"asked again after {len(self.asked) - 1} other images: {describe(again)}\n"
                f"{_lines(changed)}\n"
                "an answer depends on the calls before it: keep per-call state local"
            )
            raise self.broken(NO_STATE, detail, sample=first, reproduce=self.same_run())

    def same_as_here(self, compared: Sequence[Sample]) -> None:
        """This instance, served in this process's threads, answers as the inference process did."""
        with self.served(in_a_process=False) as self.client:
            for sample in compared:
                if sample not in self.answers:
                    continue
                here = self.ask(sample, sample.encode())
                there = self.answers[sample]
                if here is not None and (changed := differences(there, here)):
                    detail = (
                        f"in an inference process, a {type(self.model).__name__}() of its own: "
                        f"{describe(there)}\n"
                        f"in this process, the instance given to check_model: {describe(here)}\n"
                        f"{_lines(changed)}\n"
                        "the server makes the model with no arguments in each process: set it "
                        "up in the class or in load(), not on the instance"
                    )
                    raise self.broken(SAME_AS_HERE, detail, sample=sample)

    def ask(self, sample: Sample, data: bytes) -> Response | None:
        """The served model's answer for ``data``; None where it failed and ANSWERS is skipped."""
        assert self.client is not None
        try:
            return self.loop.run(self.client.predict(data))
        except GRPCError as exc:
            detail = f"the call failed: {exc.status.name}: {exc.message}"
            if exc.status is Status.INTERNAL:
                detail += "\nthe server's log has the model's traceback"
        except TimeoutError:
            detail = f"no answer within {self.timeout:g} s"
        if ANSWERS in self.skip:
            return None
        raise self.broken(ANSWERS, detail, sample=sample)

    def broken(
        self, name: str, detail: str, *, sample: Sample | None = None, reproduce: str = ""
    ) -> ContractBroken:
        if not reproduce:
            reproduce = f"check_model(model, samples=[{sample!r}])" if sample else self.same_run()
        return ContractBroken(self.model.name, name, detail, sample=sample, reproduce=reproduce)

    def same_run(self) -> str:
        return "check_model(model) with the same arguments: the same seed asks the same images"

    def serve_command(self) -> str:
        try:
            return f"emotion serve --model {spec_of(self.model)}"
        except ModelLoadError:
            return "serve_model(model), or check_model(model, skip={'loads in a fresh process'})"


def _lines(found: list[str]) -> str:
    return "\n".join(found[:10]) + (f"\n... and {len(found) - 10} more" if len(found) > 10 else "")


def _first_failure(
    check: Callable[[Sample], None], fixed: Sequence[Sample], examples: int, seed: int | None
) -> ContractBroken | None:
    """``check`` each of ``fixed``, then ``examples`` drawn samples; the first failure."""
    try:
        import hypothesis
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "check_model draws images with hypothesis: pip install 'emotion[testing]'",
            name=exc.name,
        ) from exc
    failures: list[ContractBroken] = []

    def image(sample: Sample) -> None:
        if failures:
            return  # hypothesis replays a failure: the first run is the report
        try:
            check(sample)
        except ContractBroken as exc:
            failures.append(exc)
            raise

    test = hypothesis.given(sample=drawn_samples())(image)
    for sample in reversed(fixed):  # the outermost example runs first
        test = hypothesis.example(sample=sample)(test)
    test = hypothesis.settings(
        max_examples=max(examples, 1),
        phases=[hypothesis.Phase.explicit] + ([hypothesis.Phase.generate] if examples else []),
        derandomize=False,
        database=None,
        deadline=None,
        print_blob=False,
        report_multiple_bugs=False,
        suppress_health_check=[hypothesis.HealthCheck.too_slow],
    )(test)
    if seed is not None:
        test = hypothesis.seed(seed)(test)
    try:
        test()
    except Exception:
        if not failures:
            raise
    if not failures:
        return None
    failure = failures[0]
    with contextlib.suppress(AttributeError):
        del failure.__notes__  # hypothesis's replay notes: the message says it all
    return failure
