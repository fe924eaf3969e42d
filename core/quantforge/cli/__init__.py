"""The ``quantforge`` command line: one module per command group, ``arguments`` for the
parser and its checks, ``common`` for what several commands share.

The top layer: may import anything in quantforge; nothing imports it but ``__main__``.
"""
