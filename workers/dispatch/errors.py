"""The dispatcher's errors, below the core's tree (shared/errors.py)::

RetryableError
└── QueueUnavailableError   the remote queue timed out, refused, or answered 5xx/garbage
PermanentError
├── ConfigError
│   └── QueueAuthError      the queue refuses our token (401/403): names the setting
├── QueueRejectedError      the queue refused one call for good (404, 409, 422), with status
└── InvalidRequestError
    └── InvalidJobError     a fetched job that can never be dispatched (the reason says why)
"""

from __future__ import annotations

from shared.errors import ConfigError, InvalidRequestError, PermanentError, RetryableError


class QueueUnavailableError(RetryableError):
    """The remote queue could not be reached or answered with a server error."""


class QueueAuthError(ConfigError):
    """The remote queue refused our bearer token."""


class QueueRejectedError(PermanentError):
    """The queue refused this one call (unknown job, another outcome already recorded...)."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class InvalidJobError(InvalidRequestError):
    """A job that fails validation: its schema, its deadline or its requirements."""

    def __init__(self, message: str, *, code: str = "invalid_job") -> None:
        super().__init__(message)
        self.code = code
