"""Low-level helpers every room shares: atomic file writes, peak RSS, TFLite loading.

One home for each, so a fix (an fsync, a temp-file race) is made once. Imports nothing of
the project but ``errors``.
"""

__all__: list[str] = []
