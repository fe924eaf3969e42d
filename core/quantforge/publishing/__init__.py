"""Publishing: the Hugging Face model cards of a run (``card_data`` gathers the facts a card
shows, ``cards`` renders them, ``plot`` draws the trade-off plot, ``repo_names`` names the
Hub repositories) and pushing variants to the Hub (``push``).

May import: everything below it, up to :mod:`quantforge.choosing`.
"""
