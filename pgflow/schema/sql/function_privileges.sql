-- Run by the installer after it has applied extension files (whichever ones): PostgreSQL grants
-- EXECUTE on every new function to PUBLIC, and several functions of ours are SECURITY DEFINER
-- (they write as the owner), so no role may call a function of ours unless granted it
-- (pgflow_python.grant_access: every function for worker, client and operator, only the read
-- functions for readonly). `ALTER DEFAULT PRIVILEGES IN SCHEMA ... REVOKE ... FROM PUBLIC`
-- cannot do this (per-schema defaults only add to the global default, which grants PUBLIC),
-- and a REVOKE in a numbered file would miss the functions that higher-numbered files create;
-- this statement runs after the last of them. CREATE OR REPLACE keeps a function's ACL.
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA pgflow_python FROM PUBLIC;
