-- Queries the schema installer runs: catalog inspection and its own bookkeeping.
-- The DDL it applies lives in pgflow/schema/sql/ and in the upstream migrations.

-- name: server_facts
-- description: Server version, who we are, and what we may do.
SELECT current_setting('server_version_num')::int AS version_num,
       current_setting('server_version') AS version,
       current_user AS role,
       current_database() AS database,
       has_database_privilege(current_database(), 'CREATE') AS can_create,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS is_superuser

-- name: lock_installer
-- description: Serialises concurrent installers; released at the end of the transaction.
SELECT pg_advisory_xact_lock(7526403120937656182)

-- name: bookkeeping_present
-- description: Whether pgflow-python's bookkeeping table exists (false before the first install).
SELECT to_regclass('pgflow_python.installed') IS NOT NULL AS present

-- name: installed_items
-- description: What this package recorded as applied or adopted, in application order.
SELECT component, name, sha256, how, applied_at
FROM pgflow_python.installed
ORDER BY applied_at, name

-- name: record_item
-- description: Record one applied or adopted component item (name, hash, how) in the bookkeeping.
INSERT INTO pgflow_python.installed (component, name, sha256, how)
VALUES (:component, :name, :sha256, :how)

-- name: forget_item
-- description: Remove one item from the bookkeeping, so that the installer applies it again.
DELETE FROM pgflow_python.installed WHERE component = :component AND name = :name

-- name: pgmq_state
-- description: Installed extension version, plain-SQL presence, and what the server offers.
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pgmq') AS extension_version,
       to_regclass('pgmq.meta') IS NOT NULL AS tables_present,
       (SELECT default_version FROM pg_available_extensions WHERE name = 'pgmq') AS available_version

-- name: pgmq_version_available
-- description: Whether the server offers pgmq extension version :version.
SELECT EXISTS (
    SELECT 1 FROM pg_available_extension_versions WHERE name = 'pgmq' AND version = :version
) AS available

-- name: server_sharedir
-- description: The server's SHAREDIR, where extension files go; used to register bundled pgmq.
-- Superuser only (pg_config is not granted to PUBLIC).
SELECT setting FROM pg_config WHERE name = 'SHAREDIR'

-- name: realtime_state
-- description: Whether schema realtime and the function realtime.send exist.
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'realtime') AS schema_present,
       to_regprocedure('realtime.send(jsonb,text,text,boolean)') IS NOT NULL AS send_present

-- name: pgflow_functions
-- description: Function names in schema pgflow: the fingerprint of an installed upstream version.
SELECT DISTINCT p.proname AS name
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'pgflow'
ORDER BY 1

-- name: pgflow_schema_present
-- description: Whether schema pgflow exists.
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgflow') AS present

-- name: runtime_signatures
-- description: Signatures of the upstream objects pgflow-python calls at run time, one text line each.
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

-- name: schema_is_empty
-- description: Whether schema :schema holds no objects, so that DROP SCHEMA without CASCADE succeeds.
-- Every object in a schema has a normal dependency on it, which is what DROP SCHEMA checks
-- (automatic ones, such as default privileges, go with the schema).
SELECT NOT EXISTS (
    SELECT 1 FROM pg_depend
    WHERE deptype = 'n'
      AND refclassid = 'pg_namespace'::regclass
      AND refobjid = (SELECT oid FROM pg_namespace WHERE nspname = :schema)
) AS empty

-- name: flow_slugs
-- description: The slugs of every stored flow.
SELECT flow_slug FROM pgflow.flows ORDER BY flow_slug

-- name: uninstall_pgflow_schema
-- description: Remove upstream pgflow where pgflow-python applied it (its flows deleted first).
DROP SCHEMA pgflow CASCADE

-- name: uninstall_flow_type_column
-- description: Undo our additive column on an adopted upstream schema.
ALTER TABLE pgflow.flows DROP COLUMN IF EXISTS flow_type

-- name: uninstall_realtime_shim
-- description: Remove the realtime shim's function (realtime_shim.sql).
DROP FUNCTION IF EXISTS realtime.send(jsonb, text, text, boolean)

-- name: uninstall_empty_realtime_schema
-- description: Remove schema realtime once nothing else is in it.
DROP SCHEMA realtime

-- name: uninstall_pgmq_schema
-- description: Remove pgmq installed as plain SQL, with every queue.
DROP SCHEMA pgmq CASCADE

-- name: uninstall_pgmq_extension
-- description: Remove the pgmq extension, with every queue.
DROP EXTENSION IF EXISTS pgmq CASCADE

-- name: uninstall_empty_pgmq_schema
-- description: Remove schema pgmq once nothing else is in it.
-- CREATE EXTENSION made the schema its control file names, but not as a member.
DROP SCHEMA pgmq

-- name: uninstall_bookkeeping
-- description: Remove pgflow-python's own schema: its bookkeeping and extension functions.
DROP SCHEMA pgflow_python CASCADE
