"""The ``quantforge`` command line."""
