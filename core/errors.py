"""Exceptions with messages that name the offending file or parameter and the fix."""


class DistillError(Exception):
    """Base class of the project's user-facing errors."""


class DatasetNotFoundError(DistillError, FileNotFoundError):
    """A dataset's files are missing."""


class CheckpointError(DistillError):
    """A checkpoint is missing, corrupt, foreign, or does not match the data it is used with."""


class CacheMismatchError(DistillError):
    """An on-disk cache entry does not match the dataset or model it claims to belong to."""


class ImageReadError(DistillError, ValueError):
    """An image file cannot be read or decoded (the message names the file)."""


class OutputError(DistillError, ValueError):
    """An output path cannot be written as asked (checked before any work; nothing was touched)."""


class OutputExistsError(OutputError, FileExistsError):
    """An output path is taken by something this tool may not replace."""
