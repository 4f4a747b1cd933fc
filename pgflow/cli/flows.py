"""``pgflow compile``: the SQL that registers flows."""

from __future__ import annotations

import os
import sys

import click

from pgflow._loading import load_definitions
from pgflow.cli._common import reports_errors
from pgflow.compiler import compile_flow


@click.command("compile")
@click.argument("references", nargs=-1, required=True)
@reports_errors
def compile_command(references: tuple[str, ...]) -> None:
    """Print the SQL that registers flows: REFERENCES are module:Class or module.

    The output is the same text as the TypeScript compiler's, for teams that manage SQL by hand.
    """
    # Like other app runners, resolve references against the working directory.
    sys.path.insert(0, os.getcwd())
    for definition in load_definitions(*references):
        click.echo(f"-- flow {definition.slug}")
        for statement in compile_flow(definition):
            click.echo(statement)
