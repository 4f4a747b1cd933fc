-- A job is a single-step flow; the column lets tools tell the two apart. Additive only:
-- upstream functions and TypeScript workers never read it, and the default keeps them valid.
ALTER TABLE pgflow.flows
    ADD COLUMN IF NOT EXISTS flow_type text NOT NULL DEFAULT 'flow'
    CONSTRAINT flows_flow_type_is_valid CHECK (flow_type IN ('flow', 'job'));

COMMENT ON COLUMN pgflow.flows.flow_type IS 'pgflow-python: flow (a DAG) or job (one step)';
