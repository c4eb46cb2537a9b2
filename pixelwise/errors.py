"""Exceptions that the CLI reports as one clear line instead of a traceback."""

from __future__ import annotations


class PixelwiseError(Exception):
    """Base class: a problem with the user's input (data, config, checkpoint), not a bug."""


class DataError(PixelwiseError, ValueError):
    """A data set on disk is malformed: names the file and the problem."""


class ConfigError(PixelwiseError, ValueError):
    """A config key or value is wrong: names the key and lists the valid ones."""


class CheckpointError(PixelwiseError, ValueError):
    """A checkpoint cannot be used for what was asked (wrong file, other number of classes...)."""


class ResourceError(PixelwiseError, MemoryError):
    """The machine cannot do what was asked (e.g. too little memory for an image this large): says what it needs."""


class TrainingDiverged(PixelwiseError, FloatingPointError):
    """The training loss is no longer finite (too high a learning rate, most often): says the iteration."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none): third-party errors as one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
