"""Choosing a variant: the search that builds and measures candidates until one meets the
constraints (``search``), and the recommendation read from a finished run (``recommend``).

May import: everything below it: the plugin API, plugins, model, store, devices, running.
"""
