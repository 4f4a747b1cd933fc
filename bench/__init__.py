"""Benchmarks: pgflow-python against PgQueuer, Procrastinate, DBOS and a pure-SQL floor.

``make bench`` or ``python -m bench --help``; method and results in docs/performance.md.
"""
