"""An example application package used by the docs and the tests."""
