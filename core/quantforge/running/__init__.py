"""Running: from a recipe to measured variants in the results store.

``recipe`` parses a run (``RunConfig``), ``constraints`` holds the search constraints a
recipe may carry, ``planner`` turns variant specs into cached steps, ``support`` and
``preflight`` refuse what cannot work before any compute, ``runner`` drives a run
(``building`` and ``measuring`` do its two halves, ``estimates`` the device profiles),
executors (``executor``, ``local_executor``, ``ray_executor``, chosen in ``executors``)
start the ``worker`` processes, ``locks`` lets runs share a cache, ``provenance`` records
what measured what.

May import: the plugin API, :mod:`quantforge.plugins`, :mod:`quantforge.model`,
:mod:`quantforge.store`, :mod:`quantforge.devices`.
"""
