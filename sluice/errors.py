"""Every exception Sluice raises on purpose derives from :class:`SluiceError`.

Messages are written for the person who has to fix the problem: they say what was wrong and
what to change.
"""


class SluiceError(Exception):
    """Root of all Sluice errors."""


class ConfigError(SluiceError):
    """Settings or the model registry are invalid."""


class UnknownModelError(SluiceError):
    """A job names a model that is not in the registry."""


class ValidationError(SluiceError):
    """Submitted input does not fit the task; raised before anything is written."""


class JobNotFoundError(SluiceError):
    """No job with the given id exists in the database."""


class ItemError(SluiceError):
    """One item cannot be processed; it fails alone, with this message stored."""


class InfrastructureError(SluiceError):
    """A service Sluice depends on is unreachable for now; retrying later may succeed."""


class DatabaseUnavailableError(InfrastructureError):
    """The database cannot be reached (down, restarting, connection dropped, locked)."""


class BrokerError(InfrastructureError):
    """The broker (Redis) cannot be reached or started."""
