"""Python client for sidecred, the secrets broker sidecar.

    from sidecred_client import Client

    with Client() as client:                       # $SIDECRED_SOCKET
        with client.session(labels={"agent_id": "a1"}) as session:
            with session.call("call-1") as call:
                token = call.get_secret("tools/github-token")
                use(token.expose())
            # the call's leases are released and token's buffer is zeroed here

The asyncio flavour is ``sidecred_client.AsyncClient`` with ``async with``.
"""

from ._core import RetryPolicy, SecretEvent
from .admin import AdminClient
from .aio import AsyncCall, AsyncClient, AsyncSession, AsyncWatch
from .errors import (
    ConfigError,
    DeadlineExceededError,
    DeniedError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    RevokedError,
    SessionExpiredError,
    SessionRevokedError,
    SidecredError,
    UnavailableError,
)
from .secret import SecretValue
from .sync import Call, Client, Session, Watch

__all__ = [
    "AdminClient", "AsyncCall", "AsyncClient", "AsyncSession", "AsyncWatch", "Call", "Client",
    "ConfigError", "DeadlineExceededError", "DeniedError", "FailedPreconditionError",
    "InternalError", "InvalidArgumentError", "NotFoundError", "RetryPolicy", "RevokedError",
    "SecretEvent", "SecretValue", "Session", "SessionExpiredError", "SessionRevokedError",
    "SidecredError", "UnavailableError", "Watch",
]
