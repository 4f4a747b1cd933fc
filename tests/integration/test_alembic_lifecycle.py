"""The Alembic plugin's lifecycle: downgrades, the schema branch, the CLI, offline SQL."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from alembic_pgflow.errors import FlowHasRunsError, SchemaDowngradeRefusedError
from pgflow.schema import install
from pgflow.schema._sources import extension_migrations
from pgflow.testing import temporary_database
from tests.helpers import database
from tests.helpers.alembic_project import (
    FLOWS,
    SHAPE_CHANGED,
    AlembicProject,
    acme_project,
    flow_calls,
    start_greeting,
    stored_flows,
)


@pytest.fixture
def project(tmp_path: Path, pgflow_empty_database: URL) -> AlembicProject:
    return acme_project(tmp_path, pgflow_empty_database)


def revision_id(revision_text: str) -> str:
    return revision_text.split("Revision ID: ")[1].split(maxsplit=1)[0]


def alembic_cli(project: AlembicProject, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``alembic`` command in a new interpreter: nothing imported beforehand."""
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(project.root / "alembic.ini"), *args],
        cwd=project.root,
        capture_output=True,
        text=True,
        check=False,
    )


def test_downgrade_of_a_created_flow_refuses_while_it_has_runs(project: AlembicProject) -> None:
    project.upgrade("heads")
    project.revision("add flows")
    project.upgrade("heads")
    start_greeting(project.url)

    with pytest.raises(FlowHasRunsError) as raised:
        project.downgrade("-1")
    assert str(raised.value) == (
        "cannot drop flow 'greeting': it has 1 runs (1 still started), and dropping a flow "
        "deletes its runs. If losing them is intended, edit the revision to call "
        'op.drop_flow("greeting", delete_runs=True); otherwise keep this revision applied.'
    )
    assert sorted(stored_flows(project.url)) == ["greeting", "send_mail", "thumbnails"]

    database.run_sql(
        project.url,
        "DELETE FROM pgflow.step_tasks; DELETE FROM pgflow.step_states; DELETE FROM pgflow.runs;",
    )
    project.downgrade("-1")
    assert stored_flows(project.url) == {}
    assert database.scalar(project.url, "SELECT count(*) FROM pgmq.meta") == 0


def test_schema_branch_downgrade_needs_an_explicit_opt_in(project: AlembicProject) -> None:
    project.upgrade("heads")
    project.revision("add flows")
    project.upgrade("heads")

    with pytest.raises(SchemaDowngradeRefusedError, match="pgflow_drop_schema=yes downgrade"):
        project.downgrade("base")
    # One transaction: the flows the same command had already dropped are back.
    assert sorted(stored_flows(project.url)) == ["greeting", "send_mail", "thumbnails"]

    # Flows with runs still need their own revision's opt-in: the schema flag is not a blanket one.
    start_greeting(project.url)
    with pytest.raises(FlowHasRunsError):
        project.downgrade("base", x=("pgflow_drop_schema=yes",))
    database.run_sql(
        project.url,
        "DELETE FROM pgflow.step_tasks; DELETE FROM pgflow.step_states; DELETE FROM pgflow.runs;",
    )
    project.downgrade("base", x=("pgflow_drop_schema=yes",))
    assert database.schemas(project.url) == set()
    assert database.scalar(project.url, "SELECT count(*) FROM alembic_version") == 0

    project.upgrade("heads")  # and back again, from nothing
    assert sorted(stored_flows(project.url)) == ["greeting", "send_mail", "thumbnails"]


def test_schema_branch_downgrade_removes_plain_sql_pgmq_too(project: AlembicProject) -> None:
    install(project.url, pgmq_mode="plain")  # e.g. `pgflow db install` before Alembic came in
    project.upgrade("heads")  # the schema revision finds everything installed: a no-op
    assert database.schemas(project.url) == {"pgflow", "pgflow_python", "pgmq", "realtime"}

    project.downgrade("base", x=("pgflow_drop_schema=yes",))
    assert database.schemas(project.url) == set()


@pytest.mark.slow
def test_a_revision_still_runs_after_the_flow_module_is_deleted(
    project: AlembicProject, pgflow_server: Any
) -> None:
    project.upgrade("heads")
    text = project.revision("add flows")
    assert "acme" not in text
    shutil.rmtree(project.root / "acme")
    project.write_env(plugin=False)  # env.py no longer mentions the flows, nor the plugin

    with temporary_database(pgflow_server.url) as fresh:
        project.use_database(fresh)
        result = alembic_cli(project, "upgrade", "heads")
        assert result.returncode == 0, result.stderr
        assert sorted(stored_flows(fresh)) == ["greeting", "send_mail", "thumbnails"]


@pytest.mark.slow
def test_the_alembic_command_prints_the_shape_change_explanation(project: AlembicProject) -> None:
    project.upgrade("heads")
    project.revision("add flows")
    project.upgrade("heads")
    project.write("acme/flows.py", SHAPE_CHANGED)

    result = alembic_cli(project, "revision", "--autogenerate", "-m", "change shape")

    assert result.returncode != 0
    assert "FAILED: pgflow: the shape of 2 flow(s) changed (greeting, thumbnails)" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert len(project.revision_files()) == 1


def test_offline_mode_renders_flow_operations_as_sql(
    project: AlembicProject, capsys: pytest.CaptureFixture[str]
) -> None:
    project.upgrade("heads")
    project.revision("add flows")
    revision = project.revision_files()[0].name.split("_")[0]
    capsys.readouterr()

    project.upgrade("pgflow_0002:heads", sql=True)
    sql = capsys.readouterr().out
    assert "SELECT pgflow.create_flow('greeting', max_attempts => 2, base_delay => 1);" in sql
    assert "SELECT pgflow.add_step('thumbnails', 'resize', step_type => 'map');" in sql
    assert "UPDATE pgflow.flows SET flow_type = 'job' WHERE flow_slug = 'send_mail';" in sql

    project.upgrade("heads")
    project.downgrade(f"{revision}:{revision}@-1", sql=True)
    sql = capsys.readouterr().out
    assert "SELECT pgflow_python.delete_flow('greeting', delete_runs => false);" in sql


def test_revisions_build_on_the_applications_head_not_the_schema_branch(
    project: AlembicProject, caplog: pytest.LogCaptureFixture
) -> None:
    project.upgrade("heads")
    project.write_env(registration="")  # the plugin is set up, no flows yet
    own = project.revision("application tables")
    assert "down_revision: Union[str, Sequence[str], None] = None" in own
    assert "depends_on: Union[str, Sequence[str], None] = None" in own  # no flow operations
    own_id = revision_id(own)
    project.upgrade("heads")

    project.write_env()
    text = project.revision("add flows")
    flows_id = revision_id(text)
    assert f"down_revision: Union[str, Sequence[str], None] = '{own_id}'" in text
    assert "depends_on: Union[str, Sequence[str], None] = 'pgflow_0002'" in text
    assert all(path.parent == project.versions for path in project.revision_files())
    project.upgrade("heads")

    # Merging the two lines gives back a single head (`alembic upgrade head` works again);
    # new revisions then build on the merge. Alembic writes a merge next to the first revision
    # named (merges bypass process_revision_directives), so the application's comes first.
    merge = project.run("merge", [flows_id, "pgflow@head"], message="merge pgflow")
    assert Path(merge.path).parent == project.versions
    project.upgrade("head")
    project.write(
        "acme/flows.py", FLOWS.replace('slug="thumbnails"', 'slug="thumbnails", timeout=5')
    )
    text = project.revision("tune thumbnails")
    assert f"down_revision: Union[str, Sequence[str], None] = '{merge.revision}'" in text
    assert flow_calls(text, "upgrade") == [
        (["update_flow_options", "thumbnails"], {"flow": {"timeout": 5}})
    ]

    assert project.last_revision is not None
    project.last_revision.unlink()
    project.write_env(options="")  # no process_revision_directives: warned
    with caplog.at_level(logging.WARNING, logger="alembic.autogenerate.pgflow"):
        project.revision("tune thumbnails", head=merge.revision)
    assert "does not depend on the pgflow schema branch" in caplog.text


def test_include_name_keeps_autogenerate_away_from_pgflow_schemas(
    project: AlembicProject,
) -> None:
    project.upgrade("heads")
    project.revision("add flows")
    project.upgrade("heads")
    project.write_env(
        options="include_schemas=True, include_name=alembic_pgflow.include_name, "
        "process_revision_directives=alembic_pgflow.process_revision_directives,"
    )

    text = project.revision("nothing")
    assert flow_calls(text, "upgrade") == []

    assert project.last_revision is not None
    project.last_revision.unlink()
    project.write_env(
        options="include_schemas=True, "
        "process_revision_directives=alembic_pgflow.process_revision_directives,"
    )
    unfiltered = project.revision("drops pgflow tables")
    assert "op.drop_table('flows', schema='pgflow')" in unfiltered


def test_flows_registered_as_definitions_and_classes(project: AlembicProject) -> None:
    project.upgrade("heads")
    project.write(
        "acme/plain.py",
        """\
        from pgflow.definition import FlowDefinition, StepDefinition

        NIGHTLY = FlowDefinition("nightly", (StepDefinition("collect", timeout=5),))
        """,
    )
    project.write_env(
        "from acme.flows import SendMail\n"
        "from pgflow.definition import FlowDefinition, StepDefinition\n\n"
        'alembic_pgflow.include_flows("acme.plain", SendMail, '
        'FlowDefinition("adhoc", (StepDefinition("only"),)))'
    )
    text = project.revision("mixed sources")
    assert [call[0][1]["slug"] for call in flow_calls(text, "upgrade")] == [
        "nightly",
        "send_mail",
        "adhoc",
    ]
    project.upgrade("heads")
    engine = sa.create_engine(project.url.set(drivername="postgresql+psycopg"))
    try:
        with engine.begin() as connection:
            timeout = connection.execute(
                sa.text("SELECT opt_timeout FROM pgflow.steps WHERE flow_slug = 'nightly'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert timeout == 5


def test_the_newest_schema_revision_applies_every_extension_file(project: AlembicProject) -> None:
    project.upgrade("pgflow@head")
    installed = database.scalar(
        project.url,
        "SELECT array_agg(name ORDER BY name) FROM pgflow_python.installed"
        " WHERE component = 'extension'",
    )
    assert installed == [sql.name for sql in extension_migrations()]
