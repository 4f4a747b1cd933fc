"""Alembic plugin for pgflow: schema revisions and flow autogenerate (see docs)."""
