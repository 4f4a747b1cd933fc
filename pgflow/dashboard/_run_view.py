"""What the run page shows, from what ``_data.run_detail`` read: previews, failed attempts
grouped by task, where each task's input came from, the DAG and the timeline."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pgflow.dashboard import _charts, _dag, _format
from pgflow.dashboard._data import Row, RunDetail


def task_view(task: Row, failures: list[Row] | None = None, *, is_map: bool = False) -> Row:
    return {
        **task,
        "failures": failures or [],
        "is_map": is_map,
        "output": _format.json_preview(task["output_preview"], task["output_chars"]),
        "error": _format.text_preview(task["error_preview"], task["error_chars"]),
    }


def _failure_view(failure: Row) -> Row:
    return {
        **failure,
        "message": _format.text_preview(failure["message_preview"], failure["message_chars"]),
        "traceback": _format.text_preview(failure["traceback_preview"], failure["traceback_chars"]),
    }


def _step_label(row: Row) -> str:
    if row["step_type"] != "map" or row["initial_tasks"] is None:
        return str(row["status"] or "not started")
    done = int(row["task_counts"].get("completed", 0))
    return f"{row['status']} · {done}/{row['initial_tasks']}"


def run_view(detail: RunDetail, *, now: datetime) -> dict[str, Any]:
    run = detail.run
    step_types = {row["step_slug"]: row["step_type"] for row in detail.step_shapes}
    depends_on = {row["step_slug"]: list(row["depends_on"]) for row in detail.step_shapes}
    statuses = {row["step_slug"]: row["status"] for row in detail.steps}
    labels = {row["step_slug"]: _step_label(row) for row in detail.steps}
    failures: dict[tuple[str, int], list[Row]] = {}
    for failure in detail.failures:
        key = (failure["step_slug"], failure["task_index"])
        failures.setdefault(key, []).append(_failure_view(failure))
    tasks = [
        task_view(
            task,
            failures.get((task["step_slug"], task["task_index"])),
            is_map=step_types.get(task["step_slug"]) == "map",
        )
        for task in detail.tasks
    ]
    # A resumed run's durations leave out the time it sat failed (as pgflow runs show does).
    spans = _format.failed_spans(run)

    def took(row: Row) -> str:
        return _format.took(row["started_at"], row["completed_at"] or row["failed_at"], spans)

    # The timeline ends when the run did, or now while it runs (or at a late task's end).
    end = run["completed_at"] or run["failed_at"] or now
    for task in tasks:
        end = max(end, task["completed_at"] or task["failed_at"] or end)
    return {
        "run": run,
        "run_took": took(run),
        "run_input": _format.json_preview(run["input_preview"], run["input_chars"]),
        "run_output": _format.json_preview(run["output_preview"], run["output_chars"]),
        "steps": [
            {
                **row,
                "error": _format.text_preview(row["error_preview"], row["error_chars"]),
                "label": labels[row["step_slug"]],
                "took": took(row),
            }
            for row in detail.steps
        ],
        "tasks": tasks,
        # Upstream stores no task input: a root step gets the run's input, a dependent its
        # dependencies' outputs, a map task one element of its source array.
        "inputs": {
            slug: {"is_map": step_types[slug] == "map", "from": deps}
            for slug, deps in depends_on.items()
        },
        "dag": _dag.layout(_dag.shapes_from_rows(detail.step_shapes, statuses, labels)),
        "timeline": _charts.timeline(tasks, start=run["started_at"], end=end),
        "is_live": run["status"] == "started",
    }
