"""Runs on disk: the run directory, atomic checkpoints and masks, metrics lines, and
reading a finished run back (run info) for export and profiling.

May import: errors, data, learn; never fleet or cli.
"""
