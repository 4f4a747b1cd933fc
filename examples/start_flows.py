"""Starting flows from an application with SQLAlchemy sessions (see docs/starting-flows.md).

    python examples/start_flows.py    # uses DATABASE_URL, else a local or embedded server

A signup writes the user row and starts the welcome flow in one transaction, so either both
happen or neither does. A reminder job is enqueued with a delay. Until a worker runs, the steps
are worked by the raw-SQL stand-in of examples/sql_only_flow.py.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import sql_only_flow
from pgflow import (
    Context,
    Flow,
    Job,
    enqueue,
    get_run,
    get_run_with_states,
    start_flow,
    step,
    wait_for_run,
)
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.testing import temporary_database

USERS = sa.Table(
    "users",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.Text, nullable=False, unique=True),
)


def profile_of(email: str) -> dict[str, str]:
    return {"email": email, "name": email.partition("@")[0].title()}


def greeting_for(profile: dict[str, str]) -> str:
    return f"Welcome, {profile['name']}!"


class Welcome(Flow, slug="welcome"):
    @step
    def profile(self, input: dict[str, str], ctx: Context) -> dict[str, str]:
        return profile_of(input["email"])

    @step(depends_on=[profile])
    def greeting(self, deps: dict[str, Any], ctx: Context) -> str:
        return greeting_for(deps["profile"])


class Remind(Job, slug="remind"):
    def perform(self, input: dict[str, str], ctx: Context) -> str:
        return f"reminded {input['email']}"


def sign_up(session: Session, email: str) -> uuid.UUID:
    """The app's own write and the run share the session's transaction."""
    session.execute(sa.insert(USERS).values(email=email))
    return start_flow(session, Welcome, {"email": email})


# What a worker would run for Welcome, in upstream's raw task format (see sql_only_flow.py).
WELCOME_STEPS: dict[str, tuple[list[str], sql_only_flow.Handler]] = {
    "profile": ([], lambda task: profile_of(task["run"]["email"])),
    "greeting": (["profile"], lambda task: greeting_for(task["profile"])),
}


def main() -> None:
    with temporary_database(install_schema=True) as url:
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            USERS.create(connection)
            # In an application, `alembic upgrade heads` registers the flows.
            for flow in (Welcome, Remind):
                for statement in compile_flow(definition_of(flow)):
                    connection.execute(sa.text(statement))

        with Session(engine) as session, session.begin():
            run_id = sign_up(session, "ada@example.com")
        print(f"started run {run_id} together with its user")

        with Session(engine) as session:
            abandoned = sign_up(session, "bob@example.com")
            session.rollback()
        print(f"rolled back: run exists = {get_run(engine, abandoned) is not None}")

        reminder = enqueue(engine, Remind, {"email": "ada@example.com"}, delay=timedelta(hours=1))
        print(f"enqueued reminder {reminder}, hidden from workers for an hour")

        worker = threading.Thread(
            target=sql_only_flow.drive, args=(engine, "welcome", WELCOME_STEPS, run_id)
        )
        worker.start()
        run = wait_for_run(engine, run_id, timeout=30)  # woken by NOTIFY when the run ends
        worker.join()
        print(f"run {run.status}: {run.output}")

        states = get_run_with_states(engine, run_id)
        assert states is not None
        print("steps: " + ", ".join(f"{s.step_slug} {s.status}" for s in states.steps))
        engine.dispose()


if __name__ == "__main__":
    main()
