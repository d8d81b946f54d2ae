"""What the sync and asyncio clients share: options, retry math, socket lookup, the
conversion of responses into values and events."""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass, field
from typing import Mapping, Optional

from . import _stubs
from .errors import ConfigError
from .secret import SecretValue

SOCKET_ENV = "SIDECRED_SOCKET"
ADMIN_SOCKET_ENV = "SIDECRED_ADMIN_SOCKET"
# The server's HTTP/2 stack rejects an authority that is a socket path.
CHANNEL_OPTIONS = (("grpc.default_authority", "localhost"),)

pb = _stubs.load()


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff, for UNAVAILABLE only."""

    max_attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 1.0

    def backoff(self, failed: int, jitter: Optional[float] = None) -> Optional[float]:
        """Seconds before retry number ``failed`` (1 = after the first failure), or None
        when attempts are used up. ``jitter`` in [0, 1) scales into [50%, 100%]."""
        if failed <= 0 or failed >= self.max_attempts:
            return None
        j = random.random() if jitter is None else min(max(jitter, 0.0), 1.0)
        full = min(self.initial_backoff * (2 ** min(failed - 1, 62)), self.max_backoff)
        return full * (0.5 + 0.5 * j)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class SecretEvent:
    """One step of a watched secret: CURRENT, ROTATED, RETIRED or CHANGED."""

    name: str
    kind: str
    version: str
    previous_version: str = ""
    previous_retires_at: int = 0
    at: int = 0


@dataclass
class Options:
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def target(socket, env: str = SOCKET_ENV) -> str:
    path = os.fspath(socket) if socket is not None else os.environ.get(env, "")
    if not path:
        raise ConfigError(f"no socket given and {env} is not set")
    if not os.path.isabs(path):
        raise ConfigError(f"socket path {path!r} must be absolute")
    return "unix://" + path


def new_call_id() -> str:
    return "call-" + uuid.uuid4().hex[:20]


def open_request(ttl: Optional[float], labels: Optional[Mapping[str, str]]):
    return pb.broker_pb2.OpenSessionRequest(
        ttl_seconds=max(1, int(ttl)) if ttl else 0, labels=dict(labels or {}))


def get_request(session_id: str, name: str, call_id: str = ""):
    return pb.broker_pb2.GetSecretRequest(name=name, session_id=session_id, call_id=call_id)


def to_secret(r) -> SecretValue:
    """Copies the value into a wipeable buffer; the response keeps only an immutable copy."""
    previous = None
    if r.HasField("previous"):
        previous = SecretValue(r.previous.value, name=r.name, version=r.previous.version,
                               zone=r.zone, retires_at=r.previous_retires_at)
    return SecretValue(r.value, name=r.name, version=r.version, lease_id=r.lease_id,
                       expires_at=r.expires_at, zone=r.zone, stale=r.stale, previous=previous)


def to_event(e) -> SecretEvent:
    return SecretEvent(
        name=e.name, kind=pb.broker_pb2.SecretEvent.Kind.Name(e.kind), version=e.version,
        previous_version=e.previous_version, previous_retires_at=e.previous_retires_at,
        at=e.at)
