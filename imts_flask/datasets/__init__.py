"""Datasets: the registry of uploads (uploads.py), the row checker run in a child (rows.py), and the
bounded readers of each file type it reads through (readers.py)."""
