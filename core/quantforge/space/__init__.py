"""The Gradio Space: building a Space folder from a run (``build``), loading variants and
generating side by side (``engine``, ``generation``), and the app itself (``space_app``,
a link to the repository's ``spaces/`` folder, copied into each Space).

May import: everything below it, up to :mod:`quantforge.publishing`.
"""
