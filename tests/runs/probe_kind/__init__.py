"""A FAKE kind of run, for tests/runs/test_kinds.py: what a new kind is (record.py, runner.py), and
nothing more. Its run prints its message and ends."""
