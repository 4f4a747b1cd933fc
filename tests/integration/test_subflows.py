"""Subflow steps (extension/0073_subflows.sql, ``@subflow``): a step runs another flow and waits,
holding no worker, until that run ends; its output becomes the step's output."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Context, Flow, StepStatus, get_run_with_states, start_flow, step, subflow
from pgflow.cli._render import run_details
from pgflow.dashboard import create_app
from pgflow.operations import cancel_run, describe_run, resume_run
from pgflow.testing import run_flow_inline
from tests.helpers.dashboard import http_client
from tests.helpers.database import register_flows
from tests.helpers.workers import EventLog, running_worker, wait_until_finished

DECLINING: set[str] = {"cards"}
"""While not empty, a charge with ``fail`` set is declined (a test clears it to let a resumed
child succeed)."""


class Charge(Flow, slug="sub_charge", max_attempts=1):
    @step
    def charge(self, input: dict[str, Any]) -> dict[str, Any]:
        if input.get("fail") and DECLINING:
            raise RuntimeError(f"card declined for {input['amount']}")
        return {"charged": input["amount"]}


class Checkout(Flow, slug="sub_checkout", max_attempts=1):
    @step
    def cart(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"total": sum(input["prices"]), "fail": input.get("fail", False)}

    @subflow(Charge, depends_on=[cart])
    def payment(self, deps: dict[str, Any]) -> dict[str, Any]:
        return {"amount": deps["cart"]["total"], "fail": deps["cart"]["fail"]}

    @step(depends_on=[payment])
    def receipt(self, deps: dict[str, Any]) -> dict[str, Any]:
        return {"paid": deps["payment"]["charge"]["charged"]}


class FanOut(Flow, slug="sub_fan_out", max_attempts=1):
    @step
    def items(self, input: dict[str, Any]) -> list[int]:
        return list(range(input["n"]))

    @subflow(Charge, array=items)
    def charges(self, item: int) -> dict[str, Any]:
        return {"amount": item, "fail": False}

    @step(depends_on=[charges])
    def total(self, deps: dict[str, Any]) -> int:
        return sum(c["charge"]["charged"] for c in deps["charges"])


def links(engine: Engine, run_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.begin() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT c.task_index, c.child_run_id, c.outcome, r.status AS child_status"
                " FROM pgflow_python.subflow_children AS c"
                " LEFT JOIN pgflow.runs AS r ON r.run_id = c.child_run_id"
                " WHERE c.run_id = :r ORDER BY c.step_slug, c.task_index"
            ),
            {"r": run_id},
        )
        return [dict(r) for r in rows.mappings()]


def run_status(engine: Engine, run_id: uuid.UUID) -> str:
    with engine.begin() as connection:
        return str(
            connection.execute(
                sa.text("SELECT status FROM pgflow.runs WHERE run_id = :r"), {"r": run_id}
            ).scalar_one()
        )


@pytest.mark.anyio
async def test_the_child_runs_output_reaches_the_parent(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Charge, Checkout)
    events = EventLog()
    try:
        async with running_worker(pgflow_engine, Checkout, Charge, poll_interval=0.1):
            run_id = start_flow(pgflow_engine, Checkout, {"prices": [3, 4]})
            run = await wait_until_finished(pgflow_engine, run_id)
            await _wait_for(lambda: events.named("subflow.child_ended"))
    finally:
        events.close()
    assert run == {"status": "completed", "output": {"receipt": {"paid": 7}}}
    [link] = links(pgflow_engine, run_id)
    assert link["outcome"] == "completed"
    assert link["child_status"] == "completed"
    with pgflow_engine.begin() as connection:
        parent = connection.execute(
            sa.text("SELECT parent_run_id FROM pgflow_python.run_parents WHERE run_id = :c"),
            {"c": link["child_run_id"]},
        ).scalar_one()
        payment = connection.execute(
            sa.text(
                "SELECT output, message_id, last_worker_id FROM pgflow.step_tasks"
                " WHERE run_id = :r AND step_slug = 'payment'"
            ),
            {"r": run_id},
        ).one()
    assert parent == run_id
    assert payment.output == {"charge": {"charged": 7}}
    assert payment.message_id is None
    assert payment.last_worker_id is None
    [(started, _)] = events.named("subflow.child_started")
    assert started["outcome"] == "started"
    assert started["child_run_id"] == str(link["child_run_id"])
    [(ended, _)] = events.named("subflow.child_ended")
    assert ended["outcome"] == "completed"
    assert ended["child_flow"] == "sub_charge"


async def _wait_for(condition: Any, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_a_map_over_a_subflow_runs_one_child_per_element(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Charge, FanOut)
    async with running_worker(pgflow_engine, FanOut, Charge, poll_interval=0.1):
        run_id = start_flow(pgflow_engine, FanOut, {"n": 50})
        run = await wait_until_finished(pgflow_engine, run_id, timeout=120)
    assert run == {"status": "completed", "output": {"total": sum(range(50))}}
    children = links(pgflow_engine, run_id)
    assert [c["task_index"] for c in children] == list(range(50))
    assert {c["outcome"] for c in children} == {"completed"}
    assert len({c["child_run_id"] for c in children}) == 50


def test_a_subflow_step_has_no_message_and_starts_nothing_without_a_python_worker(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Charge, Checkout)
    run_id = start_flow(pgflow_engine, Checkout, {"prices": [1]})
    worker_id = uuid.uuid4()
    with pgflow_engine.begin() as connection:  # cart, as a (TypeScript) worker would run it
        connection.execute(
            sa.text(
                "INSERT INTO pgflow.workers (worker_id, queue_name, function_name)"
                " VALUES (:w, 'sub_checkout', 'test')"
            ),
            {"w": worker_id},
        )
        ids = connection.execute(sa.text("SELECT msg_id FROM pgmq.read('sub_checkout', 30, 10)"))
        connection.execute(
            sa.text("SELECT * FROM pgflow.start_tasks('sub_checkout', :ids, :w)"),
            {"ids": [i for (i,) in ids], "w": worker_id},
        )
    with pgflow_engine.begin() as connection:
        connection.execute(
            sa.text("SELECT pgflow.complete_task(:r, 'cart', 0, :o)"),
            {"r": run_id, "o": '{"total": 1, "fail": false}'},
        )
        queued = connection.execute(
            sa.text("SELECT count(*) FROM pgmq.q_sub_checkout WHERE message->>'run_id' = :r"),
            {"r": str(run_id)},
        ).scalar_one()
    with pgflow_engine.begin() as connection:
        run = get_run_with_states(connection, run_id)
    assert run is not None
    assert {s.step_slug: str(s.status) for s in run.steps}["payment"] == "started"
    # cart's message is archived by complete_task; payment never had one.
    assert queued == 0
    [link] = links(pgflow_engine, run_id)
    assert link["child_run_id"] is None
    assert link["outcome"] is None


@pytest.mark.anyio
async def test_a_failed_child_fails_the_parent_and_resuming_the_parent_resumes_the_child(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Charge, Checkout)
    async with running_worker(pgflow_engine, Checkout, Charge, poll_interval=0.1):
        run_id = start_flow(pgflow_engine, Checkout, {"prices": [5], "fail": True})
        run = await wait_until_finished(pgflow_engine, run_id)
        assert run["status"] == "failed"
        [link] = links(pgflow_engine, run_id)
        assert link["outcome"] == "failed"
        assert link["child_status"] == "failed"
        with pgflow_engine.begin() as connection:
            error = connection.execute(
                sa.text(
                    "SELECT error_message FROM pgflow.step_states"
                    " WHERE run_id = :r AND step_slug = 'payment'"
                ),
                {"r": run_id},
            ).scalar_one()
        assert f"child run {link['child_run_id']}" in error
        assert "card declined for 5" in error

        DECLINING.clear()  # the card issuer recovers
        try:
            with pgflow_engine.begin() as connection:
                assert str(resume_run(connection, run_id).outcome) == "resumed"
            run = await wait_until_finished(pgflow_engine, run_id)
        finally:
            DECLINING.add("cards")
    assert run == {"status": "completed", "output": {"receipt": {"paid": 5}}}
    [again] = links(pgflow_engine, run_id)
    assert again["child_run_id"] == link["child_run_id"]  # resumed in place, not a new child
    assert again["outcome"] == "completed"


class Slow(Flow, slug="sub_slow", max_attempts=1):
    @step
    async def wait(self, input: Any) -> Any:
        await anyio.sleep(60)
        return input


class SlowFanOut(Flow, slug="sub_slow_fan_out", max_attempts=1):
    @step
    def items(self, input: Any) -> list[int]:
        return [1, 2, 3]

    @subflow(Slow, array=items)
    def waits(self, item: int) -> int:
        return item


@pytest.mark.anyio
async def test_cancelling_the_parent_cancels_its_running_children(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Slow, SlowFanOut)
    async with running_worker(pgflow_engine, SlowFanOut, Slow, poll_interval=0.1):
        run_id = start_flow(pgflow_engine, SlowFanOut, None)
        await _wait_for(
            lambda: len([c for c in links(pgflow_engine, run_id) if c["child_run_id"]]) == 3
        )
        with pgflow_engine.begin() as connection:
            assert str(cancel_run(connection, run_id, reason="user").outcome) == "cancelled"
        children = links(pgflow_engine, run_id)
        assert {c["outcome"] for c in children} == {"cancelled"}
        assert {c["child_status"] for c in children} == {"failed"}
        with pgflow_engine.begin() as connection:
            reasons = connection.execute(
                sa.text(
                    "SELECT reason FROM pgflow_python.run_cancellations WHERE run_id = ANY(:ids)"
                ),
                {"ids": [c["child_run_id"] for c in children]},
            ).scalars()
            assert {r.split(" (")[0] for r in reasons} == {f"parent run {run_id} ended"}


@pytest.mark.anyio
async def test_runs_show_links_a_parent_and_its_children(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Charge, FanOut)
    async with running_worker(pgflow_engine, FanOut, Charge, poll_interval=0.1):
        run_id = start_flow(pgflow_engine, FanOut, {"n": 12})
        await wait_until_finished(pgflow_engine, run_id, timeout=60)
    parent = describe_run(pgflow_engine, run_id)
    assert parent is not None
    assert parent.parent is None
    assert [c.task_index for c in parent.children] == list(range(12))
    assert {(c.flow_slug, c.step_slug, c.status, c.outcome) for c in parent.children} == {
        ("sub_charge", "charges", "completed", "completed")
    }
    child = describe_run(pgflow_engine, parent.children[3].run_id)  # type: ignore[arg-type]
    assert child is not None
    assert child.parent is not None
    assert (child.parent.run_id, child.parent.step_slug, child.parent.task_index) == (
        run_id,
        "charges",
        3,
    )
    text = run_details(parent)
    assert "children  12 (12 completed)" in text
    assert f"{parent.children[0].run_id} (sub_charge, step charges[0], completed)" in text
    assert "... and 2 more" in text
    waiting = dataclasses.replace(
        parent,
        steps=tuple(
            dataclasses.replace(s, status=StepStatus.STARTED) if s.step_slug == "charges" else s
            for s in parent.steps
        ),
        children=tuple(dataclasses.replace(c, outcome=None) for c in parent.children[:5])
        + parent.children[5:],
    )
    assert "waiting for 12 child runs (7 done)" in run_details(waiting)
    assert f"parent    {run_id} (sub_fan_out, step charges[3], completed)" in run_details(child)


class Broken(Flow, slug="sub_broken", max_attempts=2, base_delay=1):
    @subflow(Charge)
    def explodes(self, input: Any) -> Any:
        raise ValueError(f"no amount in {input!r}")


class NotJSON(Flow, slug="sub_not_json", max_attempts=1):
    @subflow(Charge)
    def odd(self, input: Any) -> Any:
        return {"amount": {1, 2}}


class Nowhere(Flow, slug="sub_nowhere_parent", max_attempts=1):
    @subflow("sub_nowhere")
    def lost(self, input: Any) -> Any:
        return input


def step_error(engine: Engine, run_id: uuid.UUID, step_slug: str) -> str:
    with engine.begin() as connection:
        return str(
            connection.execute(
                sa.text(
                    "SELECT error_message FROM pgflow.step_states"
                    " WHERE run_id = :r AND step_slug = :s"
                ),
                {"r": run_id, "s": step_slug},
            ).scalar_one()
        )


@pytest.mark.anyio
async def test_a_method_that_keeps_raising_is_retried_then_fails_the_step_and_the_run(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Charge, Broken, NotJSON, Nowhere)
    events = EventLog()
    try:
        async with running_worker(
            pgflow_engine, Broken, NotJSON, Nowhere, Charge, poll_interval=0.1
        ):
            broken = start_flow(pgflow_engine, Broken, {"x": 1})
            odd = start_flow(pgflow_engine, NotJSON, 1)
            lost = start_flow(pgflow_engine, Nowhere, 1)
            for run_id in (broken, odd, lost):
                assert (await wait_until_finished(pgflow_engine, run_id))["status"] == "failed"
    finally:
        events.close()
    assert step_error(pgflow_engine, broken, "explodes") == "ValueError: no amount in {'x': 1}"
    failures = [e for e, _ in events.named("subflow.start_failed") if e["step"] == "explodes"]
    assert [(e["attempt"], e["outcome"]) for e in failures] == [(1, "retry"), (2, "failed")]
    assert failures[0]["retry_at"] is not None
    assert "must return the child's input as JSON" in step_error(pgflow_engine, odd, "odd")
    assert step_error(pgflow_engine, lost, "lost") == (
        'subflow step "lost" runs flow "sub_nowhere", which is not in the database: register '
        "it (pgflow db migrate / compile) before starting runs"
    )
    for run_id in (broken, odd, lost):  # no child was started
        [link] = links(pgflow_engine, run_id)
        assert link["child_run_id"] is None
        assert link["outcome"] == "failed"


def test_a_child_is_started_once_however_often_its_start_is_repeated(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Charge, Nowhere)
    with pgflow_engine.begin() as connection:  # Nowhere's step, now pointed at a real flow
        connection.execute(
            sa.text(
                "SELECT pgflow_python.set_subflow_step('sub_nowhere_parent', 'lost', 'sub_charge')"
            )
        )
    run_id = start_flow(pgflow_engine, Nowhere, {"amount": 1})

    def claim() -> list[Any]:
        with pgflow_engine.begin() as connection:
            return list(
                connection.execute(
                    sa.text(
                        "SELECT * FROM pgflow_python.claim_child_starts("
                        "ARRAY['sub_nowhere_parent'], :lease, 10)"
                    ),
                    {"lease": 0},
                ).all()
            )

    def start_child() -> tuple[str, uuid.UUID]:
        with pgflow_engine.begin() as connection:
            outcome, child = connection.execute(
                sa.text(
                    "SELECT * FROM pgflow_python.start_child(:r, 'lost', 0, '{\"amount\": 1}')"
                ),
                {"r": run_id},
            ).one()
        return outcome, child

    [first] = claim()
    assert (first.input, first.flow_input, first.attempt) == ({"amount": 1}, {"amount": 1}, 1)
    [second] = claim()  # a lease of 0 s ran out: another worker takes it
    assert second.attempt == 2
    started = start_child()
    assert started[0] == "started"
    assert start_child() == ("already_started", started[1])
    assert claim() == []
    with pgflow_engine.begin() as connection:
        children = connection.execute(
            sa.text("SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'sub_charge'")
        ).scalar_one()
    assert children == 1


@pytest.mark.anyio
async def test_the_dashboard_run_page_links_parent_and_children(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Charge, FanOut)
    async with running_worker(pgflow_engine, FanOut, Charge, poll_interval=0.1):
        run_id = start_flow(pgflow_engine, FanOut, {"n": 3})
        await wait_until_finished(pgflow_engine, run_id, timeout=60)
    children = [c["child_run_id"] for c in links(pgflow_engine, run_id)]

    def pages() -> tuple[str, str]:
        with http_client(create_app(pgflow_engine)) as client:
            return client.get(f"/runs/{run_id}").text, client.get(f"/runs/{children[1]}").text

    parent_page, child_page = await anyio.to_thread.run_sync(pages)
    assert "3 child runs:" in parent_page
    for child in children:
        assert f'href="/runs/{child}"' in parent_page
    assert f'id="parent-run" href="/runs/{run_id}"' in child_page
    assert "(step charges)" in child_page


class DeclineLast(Flow, slug="sub_decline_last", max_attempts=1):
    @step
    def charge(self, input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if input["fail"] and DECLINING:
            # Declined only once the other children completed: their outputs are kept.
            assert ctx.engine is not None
            deadline = time.monotonic() + 20
            while _completed_runs(ctx.engine, "sub_decline_last") < input["others"]:
                assert time.monotonic() < deadline, "the other children did not complete"
                time.sleep(0.05)
            raise RuntimeError("declined")
        return {"charged": input["amount"]}


class PartialFanOut(Flow, slug="sub_partial_fan_out", max_attempts=1):
    @step
    def items(self, input: Any) -> list[dict[str, Any]]:
        return [{"amount": n, "fail": n == 2, "others": 2} for n in range(3)]

    @subflow(DeclineLast, array=items)
    def charges(self, item: dict[str, Any]) -> dict[str, Any]:
        return item

    @step(depends_on=[charges])
    def total(self, deps: dict[str, Any]) -> int:
        return sum(c["charge"]["charged"] for c in deps["charges"])


def _completed_runs(engine: Engine, flow_slug: str) -> int:
    with engine.begin() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM pgflow.runs WHERE flow_slug = :f AND status = 'completed'"
                ),
                {"f": flow_slug},
            ).scalar_one()
        )


@pytest.mark.anyio
async def test_resuming_a_map_over_a_subflow_keeps_completed_children_and_resumes_the_failed(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, DeclineLast, PartialFanOut)
    async with running_worker(pgflow_engine, PartialFanOut, DeclineLast, poll_interval=0.1):
        run_id = start_flow(pgflow_engine, PartialFanOut, None)
        assert (await wait_until_finished(pgflow_engine, run_id))["status"] == "failed"
        before = links(pgflow_engine, run_id)
        assert [(c["outcome"], c["child_status"]) for c in before] == [
            ("completed", "completed"),
            ("completed", "completed"),
            ("failed", "failed"),
        ]
        DECLINING.clear()
        try:
            with pgflow_engine.begin() as connection:
                assert str(resume_run(connection, run_id).outcome) == "resumed"
            run = await wait_until_finished(pgflow_engine, run_id)
        finally:
            DECLINING.add("cards")
    assert run == {"status": "completed", "output": {"total": 0 + 1 + 2}}
    after = links(pgflow_engine, run_id)
    assert [c["child_run_id"] for c in after] == [c["child_run_id"] for c in before]
    assert {c["outcome"] for c in after} == {"completed"}
    assert _completed_runs(pgflow_engine, "sub_decline_last") == 3  # none ran twice
    with pgflow_engine.begin() as connection:
        attempts = connection.execute(
            sa.text(
                "SELECT step_slug, sum(attempts_count) FROM pgflow.step_tasks"
                " WHERE run_id = ANY(:ids) GROUP BY 1"
            ),
            {"ids": [c["child_run_id"] for c in after]},
        ).all()
    assert dict(attempts) == {"charge": 3}  # the resumed child's task was queued afresh


def test_run_flow_inline_serves_the_child_flows_too(pgflow_engine: Engine) -> None:
    run = run_flow_inline(Checkout, {"prices": [2, 5]}, pgflow_engine)
    assert run.output == {"receipt": {"paid": 7}}


class Outer(Flow, slug="sub_outer", max_attempts=1):
    @subflow(Checkout)
    def checkout(self, input: Any) -> Any:
        return {"prices": input}


def test_subflows_nest_a_grandchilds_output_reaches_the_grandparent(pgflow_engine: Engine) -> None:
    run = run_flow_inline(Outer, [1, 2, 3], pgflow_engine)
    assert run.output == {"checkout": {"receipt": {"paid": 6}}}
    parent = describe_run(pgflow_engine, run.run_id)
    assert parent is not None
    [child] = parent.children
    assert child.run_id is not None
    middle = describe_run(pgflow_engine, child.run_id)
    assert middle is not None
    assert middle.parent is not None
    assert middle.parent.run_id == run.run_id
    assert [(c.flow_slug, c.status) for c in middle.children] == [("sub_charge", "completed")]
