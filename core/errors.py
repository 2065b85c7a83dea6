"""The project's own error types: bad input that the entry points report as one line with exit code 2.

Everything else (a bug, an exception of torch or numpy) keeps its traceback and exits with code 1.

* :class:`RsitrError` is the base; ``train.py`` / ``test.py`` catch only it.
* :class:`ConfigError`: a bad key, type or value of a config (the message names the key and the file).
* :class:`DataError`: a dataset file that is malformed (wrong line counts, duplicated names, empty captions ...).
* :class:`ConfigKeyError` / :class:`MissingEntryError`: the same, where callers look them up as KeyError.
* :class:`MissingFileError`: a file or folder the run needs does not exist (dataset, vocabulary, pretrained asset).
* :class:`CheckpointError`: a missing, truncated or foreign checkpoint.
* :class:`RunError`: a run cannot start (existing run directory, unwritable output, no CUDA ...).

Each also derives from the builtin type that code used before (ValueError, FileNotFoundError, RuntimeError), so
``except ValueError`` in callers and tests keeps working.
"""
from __future__ import annotations


class RsitrError(Exception):
    """Bad input of a user; the message is one line that names the culprit and what to do."""


class ConfigError(RsitrError, ValueError):
    """A bad key, type or value in a config; the message names the key and the file."""


class DataError(RsitrError, ValueError):
    """A malformed dataset file (the message names the file and, where it helps, the line)."""


class MissingFileError(RsitrError, FileNotFoundError):
    """A file or folder the run needs is missing (the message names it and where it comes from)."""


class ConfigKeyError(ConfigError, KeyError):
    """A ConfigError that callers may also catch as KeyError (an unknown name, a missing model output)."""

    __str__ = Exception.__str__  # KeyError would quote the message


class MissingEntryError(DataError, KeyError):
    """A data file lacks an entry the run needs (also a KeyError, as the lookup that failed)."""

    __str__ = Exception.__str__


class CheckpointError(RsitrError, ValueError):
    """A missing, truncated or foreign checkpoint."""


class RunError(RsitrError, RuntimeError):
    """A run cannot start (existing run directory, unwritable output, CUDA not available, ...)."""


def one_line(err: BaseException) -> str:
    """The message of ``err`` as one line (first argument, newlines folded)."""
    msg = str(err.args[0]) if err.args else str(err) or type(err).__name__
    return " ".join(part.strip() for part in msg.splitlines() if part.strip())


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops (exit 1) and the last good checkpoint is kept.

    Not an :class:`RsitrError`: the input may be fine, the training diverged.
    """
