"""Typed errors. The server tags each status with a ``sidecred-error`` code; we map that
first and fall back to the gRPC status code. Messages carry names and ids, never values."""

from __future__ import annotations

from typing import Optional

import grpc


class SidecredError(Exception):
    """Base of every error this package raises."""

    code: str = "unknown"

    def __init__(self, message: str, grpc_code: Optional[grpc.StatusCode] = None):
        super().__init__(message)
        self.message = message
        self.grpc_code = grpc_code

    @property
    def transient(self) -> bool:
        """Only UNAVAILABLE is worth retrying."""
        return False


class DeniedError(SidecredError):
    code = "denied"


class NotFoundError(SidecredError):
    code = "not-found"


class SessionRevokedError(SidecredError):
    """The session was revoked (e.g. compromised): stop using it and open a new one."""

    code = "session-revoked"


RevokedError = SessionRevokedError


class SessionExpiredError(SidecredError):
    code = "session-expired"


class UnavailableError(SidecredError):
    code = "unavailable"

    @property
    def transient(self) -> bool:
        return True


class InvalidArgumentError(SidecredError):
    code = "invalid-argument"


class FailedPreconditionError(SidecredError):
    code = "failed-precondition"


class DeadlineExceededError(SidecredError):
    code = "deadline-exceeded"


class InternalError(SidecredError):
    code = "internal"


class ConfigError(SidecredError):
    """Bad client setup: no socket path, a relative path."""

    code = "config"


_BY_TAG = {
    c.code: c
    for c in (DeniedError, NotFoundError, SessionRevokedError, SessionExpiredError,
              UnavailableError, InvalidArgumentError, FailedPreconditionError,
              DeadlineExceededError, InternalError)
}
_BY_STATUS = {
    grpc.StatusCode.PERMISSION_DENIED: DeniedError,
    grpc.StatusCode.UNAUTHENTICATED: DeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def classify(code: Optional[grpc.StatusCode], details: str, trailers) -> SidecredError:
    """Builds the typed error for a status code, its message and its trailing metadata."""
    tag = None
    for key, value in trailers or ():
        if key == "sidecred-error":
            tag = value.decode() if isinstance(value, bytes) else value
    cls = _BY_TAG.get(tag) or _BY_STATUS.get(code) or SidecredError
    name = code.name if code is not None else "UNKNOWN"
    return cls(f"{name}: {details or ''}".rstrip(": "), code)


def from_rpc_error(e: grpc.RpcError) -> SidecredError:
    """Works for sync ``grpc.RpcError`` and ``grpc.aio.AioRpcError`` alike."""
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    trailers = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    return classify(code, details or "", trailers)
