"""Every shell walkthrough in docs/ and the README is run by a test, or marked as illustrative
(``<!-- illustrative: why -->`` on the line above its fence): a new shell block that is neither
fails here, and so does an entry below whose block or test has gone."""

from __future__ import annotations

import ast

from tests.helpers.docs import ROOT, shell_blocks

# (page, the block's first line) -> the test that runs the block's commands as written.
RUN_BY_TESTS = {
    ("docs/alembic.md", "$ mkdir shop-app && cd shop-app"): (
        "tests/integration/test_alembic_docs.py::test_the_alembic_page_works_from_alembic_init"
    ),
    ("docs/alembic.md", "$ export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/shop"): (
        "tests/integration/test_alembic_docs.py::test_the_alembic_page_works_from_alembic_init"
    ),
    ("docs/dashboard.md", "$ pgflow dashboard --help"): (
        "tests/integration/test_doc_commands.py::test_dashboard_help_is_as_shown"
    ),
    ("docs/defining-flows.md", "$ cd examples && pgflow compile myapp.flows:Thumbnails"): (
        "tests/integration/test_doc_commands.py::test_compile_prints_what_defining_flows_shows"
    ),
    ("docs/flow-control.md", "$ python examples/flow_control.py"): (
        "tests/integration/test_flow_control_example.py::test_the_example_prints_what_the_page_shows"
    ),
    ("docs/installation.md", "$ export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/app"): (
        "tests/integration/test_doc_commands.py::test_installing_and_removing_the_schema_as_shown"
    ),
    ("docs/installation.md", "$ pgflow db uninstall --yes"): (
        "tests/integration/test_doc_commands.py::test_installing_and_removing_the_schema_as_shown"
    ),
    ("docs/operations.md", "$ python examples/operating_runs.py"): (
        "tests/integration/test_operating_runs_example.py::test_the_operating_runs_example_runs"
    ),
    ("docs/waiting.md", "$ python examples/subflows.py"): (
        "tests/integration/test_waiting_example.py::"
        "test_the_subflows_example_prints_what_the_page_shows"
    ),
    ("docs/waiting.md", "$ python examples/waiting.py"): (
        "tests/integration/test_waiting_example.py::"
        "test_the_waiting_example_prints_what_the_page_shows"
    ),
    (
        "README.md",
        "$ python3 -m venv .venv && . .venv/bin/activate          # Python 3.11+",
    ): (
        "tests/acceptance/test_readme_install.py::"
        "test_the_readme_install_lines_work_from_a_fresh_clone"
    ),
}


def _test_functions(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


def test_every_shell_block_is_run_by_a_test_or_marked_illustrative() -> None:
    blocks = shell_blocks()
    assert len(blocks) > 20  # the reader found the pages' blocks (indented ones too)
    neither = [
        f"{b.page}:{b.line} {b.first_line!r}"
        for b in blocks
        if b.illustrative is None and (b.page, b.first_line) not in RUN_BY_TESTS
    ]
    assert neither == [], (
        "shell blocks neither run by a test (RUN_BY_TESTS) nor marked "
        "'<!-- illustrative: why -->' on the line above:\n" + "\n".join(neither)
    )
    both = [
        f"{b.page}:{b.line}"
        for b in blocks
        if b.illustrative is not None and (b.page, b.first_line) in RUN_BY_TESTS
    ]
    assert both == [], f"run by a test, yet marked illustrative: {both}"


def test_each_block_said_to_be_run_exists_and_so_does_its_test() -> None:
    present = {(b.page, b.first_line) for b in shell_blocks()}
    for (page, first_line), test in RUN_BY_TESTS.items():
        assert (page, first_line) in present, f"{page} has no shell block {first_line!r}"
        path, _, name = test.partition("::")
        assert name in _test_functions(path), f"{test} does not exist"
        assert page.rsplit("/", 1)[-1] in (ROOT / path).read_text(), f"{path} never names {page}"
