"""The one exception hierarchy of anodiff.

Everything raised on purpose derives from :class:`AnodiffError`; the CLI shows
such errors as one line without a traceback and exits with status 2. Anything
else escaping the library is a bug and keeps its traceback.
"""


class AnodiffError(Exception):
    """Raised on purpose by anodiff; the CLI shows it without a traceback."""


class ConfigError(AnodiffError, ValueError):
    """A bad or unknown configuration key, or a value out of range."""


class DataError(AnodiffError):
    """An unreadable file, or a shape/affine/spacing/content problem in the data."""


class CheckpointError(AnodiffError):
    """A model folder that is missing pieces or disagrees with its config."""


class TrainingError(AnodiffError):
    """Training that cannot go on: the loss diverged (not finite, or exploding)."""
