"""User-facing errors: each message names the problem and how to fix it, on one line."""


class BenchmarkError(Exception):
    """An error caused by the user's input (path, name, option); the CLI prints it without a traceback."""


class DataError(BenchmarkError):
    """A data set path, layout, file name or image is not what the loader expects."""


class AttackValidityError(BenchmarkError):
    """An attack returned images outside the epsilon-ball, outside [0, 1], or not finite."""


class CorruptCacheError(BenchmarkError):
    """A cache entry is missing files, unreadable or does not match the hash recorded when it was written."""


class RunInterrupted(BenchmarkError):
    """The user interrupted a run (Ctrl-C); finished work stays cached."""
