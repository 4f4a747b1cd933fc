-- Indexes for the web dashboard (pgflow/dashboard/): every page reads a bounded slice of runs
-- through one of these, newest first, so no page scans all runs. Additive only: upstream's
-- functions never depend on them. Each costs one more index entry per run insert and per run
-- status change (upstream's idx_runs_status already rules out HOT updates there).

-- The runs list without filters, the overview's last-24-hours window and the throughput chart.
CREATE INDEX IF NOT EXISTS dashboard_runs_by_start
    ON pgflow.runs (started_at, run_id);

-- The runs list filtered by flow (with or without a status) and a flow's run history.
CREATE INDEX IF NOT EXISTS dashboard_runs_by_flow_start
    ON pgflow.runs (flow_slug, started_at, run_id);

-- The runs list filtered by status across flows (failed runs are few and far between).
CREATE INDEX IF NOT EXISTS dashboard_runs_by_status_start
    ON pgflow.runs (status, started_at, run_id);

-- Tasks a worker completed recently (the workers page). Partial, so queued and started tasks,
-- the hot path's churn, never enter it; a completed task is written once more, at completion.
CREATE INDEX IF NOT EXISTS dashboard_tasks_completed_by_worker
    ON pgflow.step_tasks (last_worker_id, completed_at)
    WHERE status = 'completed';
