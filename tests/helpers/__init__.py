"""Helpers shared by the tests: plain functions and flows (fixtures are in conftest files)."""
