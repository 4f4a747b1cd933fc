"""Run one handler: sync in a worker thread, async on the event loop; enforce the timeout;
turn the result into the JSON text upstream stores, or an error message."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from pgflow.context import Context
from pgflow.dsl import HandlerSpec


@dataclass(frozen=True, slots=True)
class Completed:
    output_json: str


@dataclass(frozen=True, slots=True)
class Failed:
    error: str


Outcome = Completed | Failed


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def to_json(value: Any) -> str:
    """The exact JSON text of an output (0, false and "" stay themselves); NaN is not JSON."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False)


async def run_handler(
    instance: object,
    spec: HandlerSpec,
    handler_input: Any,
    context: Context,
    *,
    timeout: float,
    thread_limiter: anyio.CapacityLimiter,
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
                result = await anyio.to_thread.run_sync(
                    lambda: handler(*args), abandon_on_cancel=True, limiter=thread_limiter
                )
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:
        # Whatever a handler raises (even SystemExit or a BaseException subclass) fails only
        # that attempt; the worker's own shutdown arrives as cancellation, re-raised above.
        return Failed(describe(exc))
    if deadline.cancelled_caught:
        return Failed(
            f"TimeoutError: step {context.step_slug!r} exceeded its timeout of {timeout:g}s"
        )
    try:
        return Completed(to_json(result))
    except (TypeError, ValueError) as exc:
        kind = "NaN or Infinity" if isinstance(result, float) and not math.isfinite(result) else exc
        return Failed(
            f"TypeError: step {context.step_slug!r} returned a value that is not JSON: {kind}"
        )
