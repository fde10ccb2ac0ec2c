"""Low-level helpers every room shares: atomic file writes, peak RSS, TFLite loading.

One home for each, so a fix (an fsync, a temp-file race) is made once:
``atomic`` (temp file from mkstemp in the same directory, mode set first, fsync,
rename, fsync of the directory), ``rss`` (current and peak resident set size, resetting
the peak, returning freed memory to the OS), ``tflite`` (the LiteRT interpreter loader).
Imports nothing of the project but ``errors``, and no third-party package at import time.
"""

__all__: list[str] = []
