"""The blocking client: ``Client`` → ``Session`` → ``Call``, each a context manager.

Leaving a ``Call`` releases its leases and wipes the values fetched through it; leaving a
``Session`` closes it (ending every lease it holds) and wipes the values it fetched.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterator, List, Mapping, Optional, TypeVar

import grpc

from . import _core
from ._core import RetryPolicy, SecretEvent, pb
from .errors import NotFoundError, SessionExpiredError, SessionRevokedError, SidecredError, from_rpc_error
from .secret import SecretValue

log = logging.getLogger("sidecred_client")
T = TypeVar("T")
_GONE = (NotFoundError, SessionRevokedError, SessionExpiredError)


class Client:
    """A channel to the workload socket (``socket`` or ``$SIDECRED_SOCKET``).

    ``timeout`` is the deadline of one attempt of one call, in seconds; ``retry`` bounds
    the retries, which happen on UNAVAILABLE only.
    """

    def __init__(self, socket=None, *, timeout: float = 10.0,
                 retry: Optional[RetryPolicy] = None):
        self._opts = _core.Options(timeout=timeout, retry=retry or RetryPolicy())
        self._channel = grpc.insecure_channel(_core.target(socket),
                                              options=list(_core.CHANNEL_OPTIONS))
        self._stub = pb.broker_pb2_grpc.BrokerStub(self._channel)

    def _unary(self, method: str, request) -> object:
        fn: Callable = getattr(self._stub, method)
        failed = 0
        while True:
            try:
                return fn(request, timeout=self._opts.timeout)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
            if not err.transient:
                raise err from None
            failed += 1
            delay = self._opts.retry.backoff(failed)
            if delay is None:
                err.message += f" (gave up after {failed} attempts)"
                err.args = (err.message,)
                raise err from None
            log.debug("%s unavailable; retry %d in %.3fs", method, failed, delay)
            time.sleep(delay)

    def session(self, *, ttl: Optional[float] = None,
                labels: Optional[Mapping[str, str]] = None) -> "Session":
        """Opens a session now; use it as a context manager to close it on exit."""
        r = self._unary("OpenSession", _core.open_request(ttl, labels))
        log.debug("session %s opened", r.session_id)
        return Session(self, r.session_id, r.expires_at)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Session:
    """An agent session. ``with client.session(labels={"agent_id": "a1"}) as s: ...``"""

    def __init__(self, client: Client, session_id: str, expires_at: int):
        self._client = client
        self.id = session_id
        self.expires_at = expires_at
        self.closed = False
        self._values: List[SecretValue] = []

    def get_secret(self, name: str) -> SecretValue:
        """A credential leased to the session; wiped when the session closes."""
        v = _core.to_secret(self._client._unary("GetSecret", _core.get_request(self.id, name)))
        self._values.append(v)
        return v

    def call(self, call_id: Optional[str] = None) -> "Call":
        """A tool call; its leases are released when it ends. A call id is made if not given."""
        return Call(self, call_id or _core.new_call_id())

    def watch(self, name: str) -> "Watch":
        """Version changes of one secret: CURRENT first, then ROTATED/RETIRED/CHANGED."""
        req = pb.broker_pb2.WatchSecretRequest(name=name, session_id=self.id)
        return Watch(self._client._stub.WatchSecret(req))

    def close(self) -> int:
        """Closes the session; returns how many leases ended with it. Idempotent."""
        if self.closed:
            return 0
        self.closed = True
        try:
            r = self._client._unary("CloseSession", pb.broker_pb2.CloseSessionRequest(session_id=self.id))
            return r.leases_released
        finally:
            _wipe(self._values)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except _GONE as e:
            log.debug("session %s already gone: %s", self.id, e.code)
        except SidecredError as e:
            if exc_type is None:
                raise
            log.warning("closing session %s failed: %s", self.id, e.code)


class Call:
    """One tool call inside a session. ``with session.call("call-1") as c: c.get_secret(..)``"""

    def __init__(self, session: Session, call_id: str):
        self.session = session
        self.id = call_id
        self._leases: List[str] = []
        self._values: List[SecretValue] = []

    def get_secret(self, name: str) -> SecretValue:
        """A credential leased to this call; released and wiped when the call ends."""
        r = self.session._client._unary("GetSecret", _core.get_request(self.session.id, name, self.id))
        v = _core.to_secret(r)
        self._leases.append(v.lease_id)
        self._values.append(v)
        return v

    def release(self) -> int:
        """Releases every lease of the call and wipes its values; returns the count.
        Leases already gone (expired, or ended with a revoked session) count as released."""
        leases, self._leases = self._leases, []
        first: Optional[SidecredError] = None
        try:
            for lease_id in leases:
                req = pb.broker_pb2.ReleaseLeaseRequest(lease_id=lease_id, session_id=self.session.id)
                try:
                    self.session._client._unary("ReleaseLease", req)
                except _GONE:
                    pass
                except SidecredError as e:
                    first = first or e
        finally:
            _wipe(self._values)
        if first is not None:
            raise first
        return len(leases)

    def __enter__(self) -> "Call":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.release()
        except SidecredError as e:
            if exc_type is None:
                raise
            log.warning("releasing call %s failed: %s", self.id, e.code)


class Watch:
    """An iterator of ``SecretEvent``. Ends with ``SessionRevokedError`` when the session is
    revoked; ``cancel()`` (or leaving the ``with`` block) stops it quietly."""

    def __init__(self, call):
        self._call = call
        self._cancelled = False

    def __iter__(self) -> Iterator[SecretEvent]:
        return self

    def __next__(self) -> SecretEvent:
        try:
            return _core.to_event(next(self._call))
        except grpc.RpcError as e:
            if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise from_rpc_error(e) from None

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


def _wipe(values: List[SecretValue]) -> None:
    for v in values:
        v.close()
    values.clear()
