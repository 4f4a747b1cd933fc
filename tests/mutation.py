"""Mutation testing of the set-based completion and claim SQL: does the differential suite notice
when the SQL is wrong?

Each mutant below changes one thing in extension/0010_complete_task_batch.sql or
extension/0012_claim_task_batch.sql that a plausible bug would change. For each, the suites that
compare our SQL with upstream's run with the mutated functions installed in the databases of our
side (tests/helpers/differential.py applies the file named by PGFLOW_TEST_MUTANT_SQL); the mutant
is caught when a test fails. Run with ``python -m tests.mutation`` (or ``make mutate``); it prints
one line per mutant and exits 1 if any survived or could not be applied. Mutants that cannot
change an outcome (equivalent mutants) do not belong in the list: for example dropping the
``initial_tasks IS NULL`` guard when a map child is sized (a map has one dependency, which
completes once), or the checks that a task's run has not failed, in the claim and in the
completion (extension/0060 cancels a failed run's queued and started tasks in the transaction
that fails it, so none is 'queued' or 'started').
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Read by tests/helpers/differential.py: the file of mutated SQL its set-based arms run on.
MUTANT_VARIABLE = "PGFLOW_TEST_MUTANT_SQL"
ROOT = Path(__file__).resolve().parent.parent
EXTENSION = ROOT / "pgflow" / "schema" / "sql" / "extension"
COMPLETION = "0010_complete_task_batch.sql"
CLAIM = "0012_claim_task_batch.sql"
# The lookup of the reported tasks in complete_task_batch (the mutants of which reports count).
OWNED_FILTER = (
    "AND t.status = 'started' AND t.last_worker_id = reporting_worker\n"
    "            FOR UPDATE\n        ) t"
)
# Scripted cases first: with -x, most mutants are caught in seconds instead of after the
# generated corpus.
COMPLETION_SUITE = "tests/integration/test_set_based_completion.py"
SUITES = [
    f"{COMPLETION_SUITE}::test_whole_waves_in_one_batch_match_upstream",
    f"{COMPLETION_SUITE}::test_non_array_feeding_a_map_matches_upstream",
    f"{COMPLETION_SUITE}::test_late_and_repeated_reports_match_upstream",
    f"{COMPLETION_SUITE}::test_two_batches_finishing_a_map_together_match_upstream",
    f"{COMPLETION_SUITE}::test_a_map_of_a_map_gets_null_elements_as_upstream",
    "tests/integration/test_claim_task_batch.py",
    f"{COMPLETION_SUITE}::test_set_based_completion_matches_upstream",
    "tests/integration/test_set_based_concurrency.py",
]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str
    replacement: str

    def apply(self) -> str:
        text = (EXTENSION / self.file).read_text()
        count = text.count(self.original)
        if count != 1:
            raise ValueError(f"{self.name}: the original text occurs {count} times in {self.file}")
        return text.replace(self.original, self.replacement)


MUTANTS = [
    # Which reports count.
    Mutant(
        "a completed task is completed again",
        COMPLETION,
        OWNED_FILTER,
        OWNED_FILTER.replace("t.status = 'started'", "t.status IN ('started', 'completed')"),
    ),
    Mutant(
        "a task queued for retry is completed",
        COMPLETION,
        OWNED_FILTER,
        OWNED_FILTER.replace("t.status = 'started'", "t.status IN ('started', 'queued')"),
    ),
    Mutant(
        "a worker completes a task it lost",
        COMPLETION,
        OWNED_FILTER,
        OWNED_FILTER.replace(" AND t.last_worker_id = reporting_worker", ""),
    ),
    Mutant(
        "the same position twice in a batch counts twice",
        COMPLETION,
        "        WHERE b.nth = 1\n    ),",
        "        WHERE true\n    ),",
    ),
    Mutant(
        "the last of a repeated position counts",
        COMPLETION,
        "PARTITION BY u.run_id, u.step_slug, u.task_index ORDER BY u.item",
        "PARTITION BY u.run_id, u.step_slug, u.task_index ORDER BY u.item DESC",
    ),
    Mutant(
        "SQL NULL feeding a map is not a violation",
        COMPLETION,
        "AND (b.output IS NULL OR jsonb_typeof(b.output) <> 'array')",
        "AND jsonb_typeof(b.output) <> 'array'",
    ),
    Mutant(
        "a string feeding a map is not a violation",
        COMPLETION,
        "AND (b.output IS NULL OR jsonb_typeof(b.output) <> 'array')",
        "AND (b.output IS NULL OR jsonb_typeof(b.output) NOT IN ('array', 'string'))",
    ),
    Mutant(
        "a violation only takes its own task off the fast path",
        COMPLETION,
        "bool_or(o.violates) OVER (PARTITION BY o.run_id) AS run_violates",
        "o.violates AS run_violates",
    ),
    Mutant(
        "a violating run's tasks are recorded in batch order",
        COMPLETION,
        "ORDER BY run_ids[i], step_slugs[i], task_indexes[i]",
        "ORDER BY i DESC",
    ),
    Mutant(
        "a violating run's positions are not reported as recorded",
        COMPLETION,
        "                RETURN QUERY SELECT item, NULL::uuid, NULL::text, NULL::text,\n"
        "                                    NULL::timestamptz, NULL::timestamptz;\n",
        "",
    ),
    Mutant(
        "a run failed by a violation is not reported as ended",
        COMPLETION,
        "WHERE r.run_id = ANY(slow_runs) AND r.status IN ('completed', 'failed');",
        "WHERE r.run_id = ANY(slow_runs) AND r.status = 'completed';",
    ),
    # Counters.
    Mutant(
        "a step completes after its first task",
        COMPLETION,
        "SET status = CASE WHEN ss.remaining_tasks = p.finished_tasks",
        "SET status = CASE WHEN ss.remaining_tasks = 1",
    ),
    Mutant(
        "a batch counts one task per step",
        COMPLETION,
        "remaining_tasks = ss.remaining_tasks - p.finished_tasks",
        "remaining_tasks = ss.remaining_tasks - 1",
    ),
    Mutant(
        "a fan-in counts one parent per batch",
        COMPLETION,
        "SET remaining_deps = cs.remaining_deps - cp.parents_done,",
        "SET remaining_deps = cs.remaining_deps - 1,",
    ),
    Mutant(
        "a run counts one step per batch",
        COMPLETION,
        "SET remaining_steps = r.remaining_steps - n.steps_done",
        "SET remaining_steps = r.remaining_steps - 1",
    ),
    Mutant(
        "a map child of a map forgets the batch's own tasks",
        COMPLETION,
        "                               c.finished_tasks + (",
        "                               0 + (",
    ),
    Mutant(
        "a map child of a single step gets one element too many",
        COMPLETION,
        "jsonb_array_length(c.single_output)\n",
        "jsonb_array_length(c.single_output) + 1\n",
    ),
    Mutant(
        "no empty-map cascade",
        COMPLETION,
        "PERFORM pgflow.cascade_complete_taskless_steps(cascade_run);",
        "NULL;",
    ),
    Mutant(
        "start delays ignored",
        COMPLETION,
        "SELECT st.flow_slug, coalesce(s.opt_start_delay, 0) AS delay,",
        "SELECT st.flow_slug, 0 AS delay,",
    ),
    Mutant(
        "only one message archived per flow",
        COMPLETION,
        "pgmq.archive(q.flow_slug, q.message_ids)",
        "pgmq.archive(q.flow_slug, q.message_ids[1:1])",
    ),
    Mutant(
        "a run completes one step early",
        COMPLETION,
        "WHERE r.run_id = ANY(done_runs) AND r.remaining_steps = 0",
        "WHERE r.run_id = ANY(done_runs) AND r.remaining_steps <= 1",
    ),
    Mutant(
        "a leaf map's outputs in reverse order in the run's output",
        COMPLETION,
        "jsonb_agg(lt.output ORDER BY lt.task_index)",
        "jsonb_agg(lt.output ORDER BY lt.task_index DESC)",
    ),
    Mutant(
        "a map's outputs in reverse order in step:completed",
        COMPLETION,
        "jsonb_agg(st.output ORDER BY st.task_index)",
        "jsonb_agg(st.output ORDER BY st.task_index DESC)",
    ),
    Mutant(
        "step:completed without a single step's output",
        COMPLETION,
        "                    ELSE d.output\n",
        "                    ELSE NULL\n",
    ),
    Mutant(
        "a run's output without its single leaf steps' outputs",
        COMPLETION,
        "                                  AND lt.task_index = 0\n",
        "                                  AND lt.task_index = 1\n",
    ),
    Mutant(
        "sibling steps start in reverse order",
        COMPLETION,
        "ORDER BY ss.run_id, ss.step_slug\n            FOR UPDATE",
        "ORDER BY ss.run_id, ss.step_slug DESC\n            FOR UPDATE",
    ),
    Mutant(
        "no step:started events",
        COMPLETION,
        "concat('step:', ss.step_slug, ':started'),",
        "concat('step:', ss.step_slug, ':begun'),",
    ),
    Mutant(
        "no lock on the runs before their tasks",
        COMPLETION,
        "PERFORM 1 FROM pgflow.runs r WHERE r.run_id = ANY(run_ids) ORDER BY r.run_id FOR UPDATE;",
        "NULL;",
    ),
    # Claiming.
    Mutant(
        "an attempt is not counted",
        CLAIM,
        "SET attempts_count = t.attempts_count + 1, status = 'started'",
        "SET attempts_count = t.attempts_count, status = 'started'",
    ),
    Mutant(
        "a root map element off by one",
        CLAIM,
        "ELSE jsonb_array_element(m.elements, p.task_index)",
        "ELSE jsonb_array_element(m.elements, greatest(p.task_index - 1, 0))",
    ),
    Mutant(
        "a map task's element read from another run's array",
        CLAIM,
        "WHERE m.run_id = p.run_id AND m.step_slug = p.step_slug",
        "WHERE m.step_slug = p.step_slug ORDER BY m.run_id LIMIT 1",
    ),
    Mutant(
        "a map of a map reads the previous element",
        CLAIM,
        "AND o.task_index = p.task_index",
        "AND o.task_index = greatest(p.task_index - 1, 0)",
    ),
    Mutant(
        "a map of a map passes SQL NULL where upstream passes JSON null",
        CLAIM,
        "THEN coalesce(o.output, 'null'::jsonb) END",
        "THEN o.output END",
    ),
    Mutant(
        "a map dependency's outputs in reverse order",
        CLAIM,
        "jsonb_agg(o.output ORDER BY o.task_index)",
        "jsonb_agg(o.output ORDER BY o.task_index DESC)",
    ),
    Mutant(
        "a single step's input without the run's input",
        CLAIM,
        "ELSE jsonb_build_object('run', r.input) || coalesce(o.outputs, '{}'::jsonb)",
        "ELSE coalesce(o.outputs, '{}'::jsonb)",
    ),
    Mutant(
        "reservations without the margin",
        CLAIM,
        "ARRAY(SELECT t.seconds + margin FROM timeouts t ORDER BY t.msg_id)",
        "ARRAY(SELECT t.seconds FROM timeouts t ORDER BY t.msg_id)",
    ),
    Mutant(
        "a uniform timeout's reservation without the margin",
        CLAIM,
        "coalesce(uniform_timeout + margin, reservation)",
        "coalesce(uniform_timeout, reservation)",
    ),
    Mutant(
        "messages reserved by a uniform timeout's read updated again",
        CLAIM,
        "        WHERE uniform_timeout IS NULL\n",
        "",
    ),
    Mutant(
        "the flow's timeout instead of the step's",
        CLAIM,
        "SELECT c.msg_id, coalesce(s.opt_timeout, f.opt_timeout) AS seconds",
        "SELECT c.msg_id, f.opt_timeout AS seconds",
    ),
    Mutant(
        "the attempt number is the previous one",
        CLAIM,
        "SELECT to_jsonb(c), t.seconds, st.attempts_count + 1",
        "SELECT to_jsonb(c), t.seconds, st.attempts_count",
    ),
]


def run_suites(mutated_sql: str | None, pytest_args: list[str]) -> tuple[str, str]:
    """("passed" | "failed" | "error", pytest's summary line)."""
    env = dict(os.environ)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(mutated_sql or "")
    try:
        if mutated_sql is not None:
            env[MUTANT_VARIABLE] = handle.name
        else:
            env.pop(MUTANT_VARIABLE, None)
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                *SUITES,
                "-x",
                "-q",
                "-n",
                "0",
                "-p",
                "no:cacheprovider",
                "--hypothesis-profile=mutation",
                *pytest_args,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.unlink(handle.name)
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else completed.stderr.strip()[-200:]
    if completed.returncode == 0:
        return "passed", summary
    if " failed" in summary:
        return "failed", summary
    return "error", summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__)
    parser.add_argument("-k", dest="only", help="run only the mutants whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args, pytest_args = parser.parse_known_args(argv)
    mutants = [m for m in MUTANTS if not args.only or args.only in m.name]
    if args.list:
        for mutant in mutants:
            print(f"{mutant.file}: {mutant.name}")
        return 0
    texts = [(mutant, mutant.apply()) for mutant in mutants]  # every mutant applies, or stop
    outcome, summary = run_suites(None, pytest_args)
    if outcome != "passed":
        print(f"the suites fail without a mutant ({summary}): fix them first")
        return 2
    survived = invalid = 0
    for number, (mutant, text) in enumerate(texts, 1):
        started = time.monotonic()
        outcome, summary = run_suites(text, pytest_args)
        verdict = {"failed": "caught", "passed": "SURVIVED", "error": "INVALID"}[outcome]
        survived += outcome == "passed"
        invalid += outcome == "error"
        elapsed = time.monotonic() - started
        print(
            f"{number:2}/{len(texts)} {verdict:8} {mutant.file}: {mutant.name}"
            f"  [{summary}; {elapsed:.0f} s]",
            flush=True,
        )
    caught = len(texts) - survived - invalid
    print(f"{caught} of {len(texts)} mutants caught, {survived} survived, {invalid} invalid")
    return 0 if caught == len(texts) else 1


if __name__ == "__main__":
    sys.exit(main())
