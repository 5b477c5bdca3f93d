"""Exceptions with messages that say what was expected and what came."""


class TinySAMError(Exception):
    """Base class of every error this package raises on purpose."""


class ImageError(TinySAMError, ValueError):
    """An image could not be read, or is not acceptable (format, size)."""


class PromptError(TinySAMError, ValueError):
    """A prompt (points, box, mask input) is malformed."""


class CheckpointError(TinySAMError, ValueError):
    """A checkpoint file is not a state dict of a known variant, or does not match it."""


class MissingCheckpointError(TinySAMError, FileNotFoundError):
    """No checkpoint was given or found."""
