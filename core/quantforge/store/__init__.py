"""The results store and the read model of a run.

``results`` is the SQLite store every measurement is written to, with its provenance;
``facts`` reads one run back as :class:`~quantforge.store.facts.RunFacts`, which cards,
tables, search, recommendations and the Space all read; ``table`` lays measurements out
as the trade-off tables the CLI prints.

May import: the plugin API, :mod:`quantforge.plugins` and :mod:`quantforge.model`.
"""
