"""Claiming: one poller per served flow takes free slots, claims that many tasks, hands them on.

Pollers run until the session stops; they are cancelled then, wherever they wait. A claim
itself is shielded: once sent, its reply is always taken and its tasks are always handed to a
runner, because the database has already started them for this worker.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from pgflow import telemetry
from pgflow.errors import ConnectionLost
from pgflow.worker._connection import contention
from pgflow.worker._executor import describe
from pgflow.worker._repeats import RepeatedFailure
from pgflow.worker._session import ServedFlow, ServingSession
from pgflow.worker._store import ClaimedTask

Claimed = tuple[ServedFlow, ClaimedTask]


async def poll(
    session: ServingSession, served: ServedFlow, claimed: MemoryObjectSendStream[Claimed]
) -> None:
    outage = RepeatedFailure("poll.failed")
    while True:
        await session.slots.acquire()
        # From here until the tasks are handed on, nothing may be cut short: the slots taken
        # must be given back or passed to the tasks, and a claim sent must be received.
        with anyio.CancelScope(shield=True):
            tasks, claim_failed, wakeup = await _claim_free_slots(session, served, claimed, outage)
        telemetry.emit("poll.finished", level=logging.DEBUG, flow=served.slug, claimed=len(tasks))
        if session.stopping.is_set():
            return
        if claim_failed:
            with anyio.move_on_after(1.0):
                await session.stopping.wait()
        elif wakeup is not None:
            # No more visible messages: wait for a wake-up rather than claiming again at once.
            # The wake-up event was armed before this claim, so none is missed.
            await _idle(session, served, wakeup)


async def _claim_free_slots(
    session: ServingSession,
    served: ServedFlow,
    claimed: MemoryObjectSendStream[Claimed],
    outage: RepeatedFailure,
) -> tuple[list[ClaimedTask], bool, anyio.Event | None]:
    """Claim as many tasks as there are free slots (one is held already), hand them on.

    Returns the tasks, whether the claim failed, and, when fewer tasks than slots came back,
    the wake-up event to wait on before the next claim.
    """
    # Handlers whose reports were just recorded release their slots in the next round of the
    # event loop: let them, so the claim takes a whole batch, not one task.
    await anyio.lowlevel.checkpoint()
    slots = 1
    while slots < session.options.batch_size and session.slots.value > 0:
        session.slots.acquire_nowait()
        slots += 1
    wakeup = session.arm_wakeup(served.slug)
    telemetry.emit("poll.started", level=logging.DEBUG, flow=served.slug, slots=slots)
    claim: list[ClaimedTask] | None = []
    async with session.claim_lock:
        # Checked under the lock, after every wait: no claim starts after stop().
        if not session.stopping.is_set():
            claim = await _claim(session, served, slots, outage)
            session.running.update(task.key for task in claim or ())
    tasks = claim or []
    for _ in range(slots - len(tasks)):
        session.slots.release()
    for task in tasks:
        claimed.send_nowait((served, task))
    return tasks, claim is None, wakeup if len(tasks) < slots else None


async def _claim(
    session: ServingSession, served: ServedFlow, slots: int, outage: RepeatedFailure
) -> list[ClaimedTask] | None:
    """The tasks claimed; None when the claim failed (the caller backs off). Runs under the
    session's claim lock, so ``session.running`` is exact while it runs."""
    options, store, worker_id = session.options, session.store, served.worker_id
    try:
        if worker_id in session.uncertain_claims:
            await _release_unstarted(session, served)
        tasks = await store.claim(
            served.slug,
            worker_id,
            quantity=slots,
            reservation=options.visibility_timeout,
            margin=options.visibility_margin,
        )
    except ConnectionLost as exc:
        # The claim may have committed with its reply lost: this worker would hold tasks it
        # never got. Before the next claim, give back whatever it holds but does not run.
        session.uncertain_claims.add(worker_id)
        outage.failed(flow=served.slug, error=str(exc))  # once a minute while it lasts
        return None
    except Exception as exc:
        if contention(exc) is not None:
            # A deadlock or lock timeout rolled the claim back whole: nothing is held and no
            # message is to blame (isolating would fail a good task). Back off and claim again.
            telemetry.emit(
                "poll.failed", level=logging.WARNING, flow=served.slug, error=_first_line(exc)
            )
            return None
        telemetry.emit("poll.failed", level=logging.ERROR, flow=served.slug, error=_first_line(exc))
    else:
        outage.succeeded()
        return tasks
    # Not the connection: a message whose task cannot be started rolls back the whole batch,
    # and stays first in line. Claim one by one; the bad task fails, the others run.
    try:
        tasks, rejections = await store.claim_isolated(
            served.slug,
            worker_id,
            quantity=slots,
            reservation=options.visibility_timeout,
            margin=options.visibility_margin,
        )
    except Exception as exc:
        if isinstance(exc, ConnectionLost):
            session.uncertain_claims.add(worker_id)
        telemetry.emit("poll.failed", level=logging.ERROR, flow=served.slug, error=_first_line(exc))
        return None
    for rejection in rejections:
        telemetry.emit(
            "task.rejected",
            level=logging.ERROR,
            flow=served.slug,
            step=rejection.key.step_slug,
            run_id=str(rejection.key.run_id),
            task_index=rejection.key.task_index,
            error=rejection.error,
        )
    return tasks


async def _release_unstarted(session: ServingSession, served: ServedFlow) -> None:
    released = await session.store.release_unstarted(served.worker_id, list(session.running))
    session.uncertain_claims.discard(served.worker_id)
    if released:
        telemetry.emit(
            "tasks.released",
            level=logging.WARNING,
            flow=served.slug,
            tasks=[
                {"run_id": str(k.run_id), "step_slug": k.step_slug, "task_index": k.task_index}
                for k in released
            ],
        )


# How long a poller that found no more work waits for a wake-up before it asks when the next
# message becomes visible (seconds). A flow in use is woken again within moments: the look-up
# would only compete for the server and the GIL with the tasks just claimed. Delays are whole
# seconds (start_delay, retry back-off), so a delayed message is claimed at most this late.
QUIET_BEFORE_LOOKUP = 0.05


async def _idle(session: ServingSession, served: ServedFlow, wakeup: anyio.Event) -> None:
    wait = session.options.poll_interval
    quiet = min(wait, QUIET_BEFORE_LOOKUP)
    with anyio.move_on_after(quiet):
        await wakeup.wait()
        return
    wait -= quiet
    try:
        at = await session.store.next_visible_at(served.slug)
        if at is not None:
            wait = min(wait, max(0.0, (at - datetime.now(UTC)).total_seconds()))
    except Exception:  # noqa: S110 - the plain poll interval still applies
        pass
    with anyio.move_on_after(wait):
        await wakeup.wait()


def _first_line(exc: BaseException) -> str:
    """The error without the database's CONTEXT lines (whole statements, often)."""
    return describe(exc).split("\n", 1)[0]
