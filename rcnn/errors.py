"""Typed errors of the library. The CLI turns each into one line and exit code 1."""


class RcnnError(Exception):
    """Base class of every error the library raises on bad input."""


class DataError(RcnnError):
    """A dataset, annotation or image cannot be used (missing, corrupt, malformed)."""


class MissingDependencyError(RcnnError):
    """An optional dependency (e.g. OpenCV's contrib modules) is not installed."""


class WeightsUnavailableError(RcnnError):
    """Pretrained weights could not be obtained (offline, missing file)."""


class TrainingError(RcnnError):
    """Training cannot go on (non-finite loss, empty dataset)."""
