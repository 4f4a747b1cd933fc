-- Queries the schema installer runs: catalog inspection and its own bookkeeping.
-- The DDL it applies lives in the other .sql files of this folder and in the upstream migrations.

-- name: server_facts
-- Server version, who we are, and what we may do.
SELECT current_setting('server_version_num')::int AS version_num,
       current_setting('server_version') AS version,
       current_user AS role,
       current_database() AS database,
       has_database_privilege(current_database(), 'CREATE') AS can_create,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS is_superuser

-- name: lock_installer
-- Serialises concurrent installers; released at the end of the transaction.
SELECT pg_advisory_xact_lock(7526403120937656182)

-- name: bookkeeping_present
SELECT to_regclass('pgflow_python.installed') IS NOT NULL AS present

-- name: installed_items
-- What this package recorded as applied or adopted, in application order.
SELECT component, name, sha256, how, applied_at
FROM pgflow_python.installed
ORDER BY applied_at, name

-- name: record_item
INSERT INTO pgflow_python.installed (component, name, sha256, how)
VALUES (:component, :name, :sha256, :how)

-- name: forget_item
DELETE FROM pgflow_python.installed WHERE component = :component AND name = :name

-- name: pgmq_state
-- Installed extension version, plain-SQL presence, and what the server offers.
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pgmq') AS extension_version,
       to_regclass('pgmq.meta') IS NOT NULL AS tables_present,
       (SELECT default_version FROM pg_available_extensions WHERE name = 'pgmq') AS available_version

-- name: pgmq_version_available
SELECT EXISTS (
    SELECT 1 FROM pg_available_extension_versions WHERE name = 'pgmq' AND version = :version
) AS available

-- name: server_sharedir
-- Superuser only (pg_config is not granted to PUBLIC); used to register bundled pgmq.
SELECT setting FROM pg_config WHERE name = 'SHAREDIR'

-- name: realtime_state
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'realtime') AS schema_present,
       to_regprocedure('realtime.send(jsonb,text,text,boolean)') IS NOT NULL AS send_present

-- name: pgflow_functions
-- Function names in schema pgflow: the fingerprint of an installed upstream version.
SELECT DISTINCT p.proname AS name
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'pgflow'
ORDER BY 1

-- name: pgflow_schema_present
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgflow') AS present

-- name: runtime_signatures
-- Signatures of the upstream objects pgflow-python calls at run time, one text line each.
SELECT p.oid::regprocedure::text || ' -> ' || pg_get_function_result(p.oid) AS signature
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'pgflow'
  AND p.proname IN (
    'start_tasks', 'complete_task', 'fail_task', 'set_vt_batch',
    'start_flow', 'start_flow_with_states', 'get_run_with_states'
  )
UNION ALL
SELECT 'pgflow.step_task_record('
    || string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
    || ')'
FROM pg_attribute a
WHERE a.attrelid = (SELECT typrelid FROM pg_type WHERE oid = to_regtype('pgflow.step_task_record'))
  AND a.attnum > 0 AND NOT a.attisdropped
HAVING count(*) > 0
