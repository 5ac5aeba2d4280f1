"""User-facing errors: the CLI prints these as one clear line, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CompressError(Exception):
    """A mistake the user can fix (bad config, missing data, wrong checkpoint)."""


class ConfigError(CompressError):
    """The pipeline file or an override does not validate."""


class DataError(CompressError):
    """A dataset is missing, incomplete or corrupt."""


class CheckpointError(CompressError):
    """A checkpoint cannot be loaded safely or does not fit the model."""


class DiskFullError(CompressError):
    """A write ran out of space; the previous file is intact."""


class TrainingError(CompressError):
    """Training cannot continue (NaN loss, diverged)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler's stop), raised where Ctrl-C would be, so the stage
    is recorded as interrupted, workers are stopped and the next run resumes it."""


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' hint, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
