"""Finding and holding plugins: the pluggy manager, entry points, and the name registries.

``manager`` loads every plugin registered in the ``quantforge`` entry-point group (the
first-party ones in ``plugins/`` and any installed package) and collects what their hooks
register into ``registry.Registry`` objects by kind.

May import: the plugin API (the modules at the package root). Nothing else in quantforge.
"""
