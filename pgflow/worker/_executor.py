"""Run one handler: sync in a worker thread, async on the event loop; enforce the timeout;
turn the result into the JSON text upstream stores, or an error message."""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio

from pgflow.context import Context
from pgflow.dsl import HandlerSpec
from pgflow.errors import NonRetryableError
from pgflow.worker._threads import HandlerThreads


@dataclass(frozen=True, slots=True)
class Completed:
    output_json: str


@dataclass(frozen=True, slots=True)
class Failed:
    error: str
    """``Type: message``, as upstream's ``error_message`` holds it."""
    traceback: str | None = None
    retryable: bool = True
    """False: fail the step now, whatever attempts remain (a :class:`NonRetryableError`)."""
    type_name: str = ""

    @property
    def error_type(self) -> str:
        """The exception's class name; for the worker's own messages, their ``Type:`` prefix."""
        if self.type_name:
            return self.type_name
        prefix = self.error.partition(":")[0]
        return prefix if prefix.isidentifier() else "WorkerError"

    @classmethod
    def of(cls, exc: BaseException, note: str = "") -> Failed:
        """The failure a handler's exception makes: its text, traceback and retryability."""
        return cls(
            describe(exc) + note,
            traceback=format_traceback(exc),
            retryable=not isinstance(exc, NonRetryableError),
            type_name=type(exc).__name__,
        )


Outcome = Completed | Failed


MAX_ERROR_LENGTH = 8000
"""Characters of an error message kept (tracebacks and huge reprs belong in logs, not rows)."""


def sanitize(text: str) -> str:
    """A message PostgreSQL's text accepts: no NUL, no lone surrogate, bounded length."""
    text = text.replace("\x00", "")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > MAX_ERROR_LENGTH:
        cut = len(text) - MAX_ERROR_LENGTH
        text = f"{text[:MAX_ERROR_LENGTH]}... ({cut} more characters cut)"
    return text


_THIS_FILE = (lambda: None).__code__.co_filename  # as frames name it (not always __file__)

MAX_TRACEBACK_LENGTH = 16_000
"""Characters of a traceback kept: its start and its end (where the error was raised)."""


def format_traceback(exc: BaseException) -> str | None:
    """The exception's traceback from the handler's frame on (the frames of the worker, its
    threads and anyio above it say nothing about the failure); chained exceptions in full."""
    try:
        text = "".join(traceback.format_exception(type(exc), exc, _from_the_handler(exc)))
    except BaseException:  # a broken __str__ or __repr__ deep inside the chain
        return None
    text = text.replace("\x00", "").encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= MAX_TRACEBACK_LENGTH:
        return text
    head = MAX_TRACEBACK_LENGTH // 8
    cut = len(text) - MAX_TRACEBACK_LENGTH
    return f"{text[:head]}\n... ({cut} characters cut) ...\n{text[cut + head :]}"


def _from_the_handler(exc: BaseException) -> TracebackType | None:
    """The traceback entries after the last frame of this module (``run_handler`` calls the
    handler, directly or through a lambda run in a handler thread): the handler's frame first.
    The whole traceback when the error did not come from the handler."""
    entry, start = exc.__traceback__, exc.__traceback__
    while entry is not None:
        if entry.tb_frame.f_code.co_filename == _THIS_FILE and entry.tb_next is not None:
            start = entry.tb_next
        entry = entry.tb_next
    return start


def describe(exc: BaseException) -> str:
    """``ExceptionType: message``, whatever the exception's ``__str__`` does."""
    try:
        message = str(exc)
    except BaseException as broken:  # a __str__ that raises, or recurses without end
        message = f"<message not printable: {type(broken).__name__}>"
    return sanitize(f"{type(exc).__name__}: {message}")


def to_json(value: Any) -> str:
    """The exact JSON text of an output (0, false and "" stay themselves); NaN is not JSON."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False)


def output_problem(value: Any, error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "it is nested too deeply to convert to JSON"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN or Infinity"
    return describe(error)


async def run_handler(
    instance: object,
    spec: HandlerSpec,
    handler_input: Any,
    context: Context,
    *,
    timeout: float,
    threads: HandlerThreads,
    keep_slot: Callable[[], Callable[[], None]],
) -> Outcome:
    handler = getattr(instance, spec.attribute)
    args = (handler_input, context) if spec.takes_context else (handler_input,)
    # A bare cancel scope, not fail_after: it costs less per task, and a TimeoutError the
    # handler raises itself stays the handler's own error.
    deadline = anyio.CancelScope(deadline=anyio.current_time() + timeout)
    try:
        with deadline:
            if spec.is_async:
                result = await handler(*args)
            else:
                # A sync handler cannot be interrupted: past its timeout it is abandoned (the
                # thread finishes on its own) and its late result is ignored.
                result = await threads.run(
                    lambda: handler(*args), keep_slot=keep_slot, deadline=deadline.deadline
                )
    except anyio.get_cancelled_exc_class() as exc:
        if anyio.current_effective_deadline() == -math.inf:
            raise  # the worker's own shutdown (or the caller's): not this attempt's outcome
        # Raised by the handler itself (e.g. an awaited future that someone cancelled): only
        # a failed attempt, never the end of the runner that called it.
        return Failed.of(exc, " (a cancellation the worker did not request)")
    except BaseException as exc:
        # Whatever a handler raises (even SystemExit or a BaseException subclass) fails only
        # that attempt; the worker's own shutdown arrives as cancellation, re-raised above.
        return Failed.of(exc)
    if deadline.cancelled_caught:
        return Failed(
            f"TimeoutError: step {context.step_slug!r} exceeded its timeout of {timeout:g}s"
        )
    if spec.is_async and anyio.current_time() > deadline.deadline:
        # It returned without awaiting once its deadline had passed: it blocked the event loop
        # (time.sleep, a sync driver) for that long, so the cancellation never reached it.
        ran_for = anyio.current_time() - deadline.deadline + timeout
        return Failed(
            f"TimeoutError: step {context.step_slug!r} exceeded its timeout of {timeout:g}s "
            f"(it ran {ran_for:.1f}s, blocking the event loop: an async handler must not call "
            "blocking code; make it a sync handler or await the blocking call in a thread)"
        )
    try:
        output = to_json(result)
        # A lone surrogate passes json.dumps but is not valid UTF-8, so PostgreSQL (and the
        # driver, before it) cannot take it.
        output.encode("utf-8")
    except Exception as exc:  # TypeError, ValueError, RecursionError, UnicodeEncodeError...
        return Failed(
            f"TypeError: step {context.step_slug!r} returned a value that is not JSON: "
            f"{output_problem(result, exc)}"
        )
    return Completed(output)
