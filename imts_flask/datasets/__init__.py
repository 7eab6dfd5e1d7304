"""Datasets: the registry of uploads (uploads.py) and the row checker run in a child (rows.py)."""
