"""The papers' 2-D toy figures' configuration (``recipes/toy2d.py``)."""
