"""The example shop application."""
