-- Access grants and the checks built on them (extension/0009_access_grants.sql holds the rules).

-- name: missing_privileges
-- description: The privileges the connected role lacks to work as :access for the queues :queues (NULL: all); one row per missing (object, privilege).
-- has_*_privilege counts privileges inherited through role membership, as the server does.
SELECT needed.object_kind, needed.object_name, needed.privilege
FROM pgflow_python.access_needed(:access, :queues) AS needed
WHERE NOT CASE needed.object_kind
    WHEN 'schema' THEN has_schema_privilege(needed.object_name, needed.privilege)
    WHEN 'table' THEN has_table_privilege(needed.object_name, needed.privilege)
    WHEN 'sequence' THEN has_sequence_privilege(needed.object_name, needed.privilege)
    ELSE has_function_privilege(needed.object_name, needed.privilege)
END
ORDER BY needed.object_kind, needed.object_name, needed.privilege

-- name: grant_access
-- description: Grant role :grantee what a role of kind :access needs, now and for objects the current role creates later; returns the number of object privileges granted.
SELECT pgflow_python.grant_access(:grantee, :access) AS granted
