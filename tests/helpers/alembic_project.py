"""A throwaway Alembic project on disk, driven in-process through ``alembic.command``.

Each command gets a fresh ``Config`` (as each ``alembic`` invocation would), and afterwards the
project's own modules are forgotten, so that a later command imports what is on disk then: a
deleted module is really gone, not served from ``sys.modules``.

A rewritten source file also loses its cached bytecode. Python trusts a ``.pyc`` whose recorded
source mtime (whole seconds) and size match the file: a test that rewrites ``acme/flows.py``
within the same second as the previous import, with text of the same length, would otherwise run
the old flows (this made the option-change test fail whenever bytecode was written).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
import textwrap
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

import sql_only_flow
from alembic_pgflow import version_location
from pgflow._db import create_engine

INI = """\
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = %(here)s
revision_environment = true
path_separator = newline
version_locations =
    %(here)s/migrations/versions
    alembic_pgflow:versions
sqlalchemy.url = {url}
"""

ENV = """\
from alembic import context
from sqlalchemy import MetaData, engine_from_config, pool

{imports}

{registration}

target_metadata = {metadata}


def run_migrations_offline() -> None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        {options}
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = engine_from_config(
        context.config.get_section(context.config.config_ini_section, {{}}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            {options}
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
"""

APP = "acme"
"""The test application's package name (unlike ``myapp``, which examples/ also defines)."""
HOOK = "process_revision_directives=alembic_pgflow.process_revision_directives,"


class AlembicProject:
    def __init__(self, root: Path, url: URL) -> None:
        self.root = root
        self.url = url
        self.versions = root / "migrations" / "versions"
        self.versions.mkdir(parents=True)
        self.last_revision: Path | None = None
        self._write_ini()
        template = Path(command.__file__).parent / "templates" / "generic" / "script.py.mako"
        (root / "migrations" / "script.py.mako").write_text(template.read_text())
        self.write_env()

    def _write_ini(self) -> None:
        url = self.url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        (self.root / "alembic.ini").write_text(INI.format(url=url.replace("%", "%%")))

    def write_env(
        self,
        registration: str = f'alembic_pgflow.include_flows("{APP}.flows")',
        *,
        plugin: bool = True,
        options: str = HOOK,
        metadata: str = "MetaData()",
    ) -> None:
        """env.py as a user writes it: ``registration`` after the imports, ``options`` passed
        to ``context.configure``; ``plugin=False`` leaves alembic_pgflow out entirely."""
        text = ENV.format(
            imports="import alembic_pgflow" if plugin else "",
            registration=registration if plugin else "",
            options=options if plugin else "",
            metadata=metadata,
        )
        _write_source(self.root / "migrations" / "env.py", text)

    def write(self, relative: str, source: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_source(path, textwrap.dedent(source))
        return path

    def config(self, *x_arguments: str) -> Config:
        config = Config(str(self.root / "alembic.ini"))
        config.cmd_opts = argparse.Namespace(x=list(x_arguments))
        return config

    def run(self, name: str, *args: Any, x: tuple[str, ...] = (), **kwargs: Any) -> Any:
        before = list(sys.path)
        shipped = set(Path(version_location()).glob("*.py"))
        try:
            return getattr(command, name)(self.config(*x), *args, **kwargs)
        finally:
            sys.path[:] = before
            self.forget_modules()
            # A revision written into the installed package would leak into every other test.
            strays = set(Path(version_location()).glob("*.py")) - shipped
            for stray in strays:
                stray.unlink()
            assert not strays, f"alembic {name} wrote into alembic_pgflow: {sorted(strays)}"

    def revision(self, message: str = "flows", **kwargs: Any) -> str:
        """Autogenerate a revision; return its source text (its file is ``last_revision``)."""
        script = self.run("revision", message=message, autogenerate=True, **kwargs)
        self.last_revision = Path(script.path)
        return self.last_revision.read_text()

    def use_database(self, url: URL) -> None:
        self.url = url
        self._write_ini()

    def upgrade(self, target: str = "heads", **kwargs: Any) -> None:
        self.run("upgrade", target, **kwargs)

    def downgrade(self, target: str, **kwargs: Any) -> None:
        self.run("downgrade", target, **kwargs)

    def revision_files(self) -> list[Path]:
        return sorted(self.versions.glob("*.py"))

    def forget_modules(self) -> None:
        root = str(self.root)
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] == APP or (getattr(module, "__file__", None) or "").startswith(
                root
            ):
                del sys.modules[name]


def _write_source(path: Path, text: str) -> None:
    path.write_text(text)
    if path.suffix == ".py":
        Path(importlib.util.cache_from_source(str(path))).unlink(missing_ok=True)


# The test application's flows, and the same flows with a changed shape.
FLOWS = """\
from pgflow.dsl import Flow, Job, map_step, step


class Greeting(Flow, slug="greeting", max_attempts=2, base_delay=1):
    @step
    def name(self, input):
        return input["name"].strip().title()

    @step(depends_on=[name])
    def greeting(self, deps):
        return f"Hello, {deps['name']}!"

    @step(depends_on=[name, greeting], timeout=30)
    def card(self, deps):
        return {"to": deps["name"], "text": deps["greeting"]}


class Thumbnails(Flow, slug="thumbnails"):
    @map_step
    def resize(self, item):
        return f"{item}@200px"


class SendMail(Job, slug="send_mail", max_attempts=5):
    def perform(self, input):
        return {"sent_to": input["to"]}
"""


SHAPE_CHANGED = FLOWS.replace(
    """    @step(depends_on=[name, greeting], timeout=30)""",
    """    @step
    def audit(self, input):
        return "seen"

    @step(depends_on=[name, greeting, audit], timeout=30)""",
).replace("@map_step\n    def resize", "@step\n    def resize")


def acme_project(root: Path, url: URL) -> AlembicProject:
    """The test application ``acme`` with FLOWS, its database not migrated yet."""
    app = AlembicProject(root, url)
    app.write("acme/__init__.py", "")
    app.write("acme/flows.py", FLOWS)
    return app


def flow_calls(revision_text: str, function: str) -> list[tuple[list[Any], dict[str, Any]]]:
    """``(args, kwargs)`` of each ``op.<name>(...)`` call in ``function``, as literal values."""
    tree = ast.parse(revision_text)
    body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    calls = []
    for node in ast.walk(body):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
            calls.append(([node.func.attr, *args], kwargs))
    return calls


def stored_flows(url: URL) -> dict[str, dict[str, Any]]:
    """Flows as the database holds them, read with plain SQL."""
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            flows = {
                row["flow_slug"]: {**row, "steps": {}}
                for row in connection.execute(
                    sa.text(
                        "SELECT flow_slug, flow_type, opt_max_attempts, opt_base_delay,"
                        " opt_timeout FROM pgflow.flows"
                    )
                ).mappings()
            }
            for row in connection.execute(
                sa.text(
                    "SELECT s.flow_slug, s.step_slug, s.step_type, s.opt_max_attempts,"
                    " s.opt_base_delay, s.opt_timeout, s.opt_start_delay,"
                    " (SELECT array_agg(d.dep_slug ORDER BY d.dep_slug) FROM pgflow.deps d"
                    "   WHERE d.flow_slug = s.flow_slug AND d.step_slug = s.step_slug) AS deps"
                    " FROM pgflow.steps s ORDER BY s.step_index"
                )
            ).mappings():
                flows[row["flow_slug"]]["steps"][row["step_slug"]] = dict(row)
            return flows
    finally:
        engine.dispose()


def start_greeting(url: URL, name: str = " grace hopper") -> Any:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            return sql_only_flow.start_run(connection, "greeting", {"name": name})
    finally:
        engine.dispose()
