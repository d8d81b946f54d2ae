"""The asyncio client, the same surface as ``sync`` with ``async with`` and ``await``."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, List, Mapping, Optional

import grpc
import grpc.aio

from . import _core
from ._core import RetryPolicy, SecretEvent, pb
from .errors import NotFoundError, SessionExpiredError, SessionRevokedError, SidecredError, from_rpc_error
from .secret import SecretValue

log = logging.getLogger("sidecred_client")
_GONE = (NotFoundError, SessionRevokedError, SessionExpiredError)


class AsyncClient:
    """``async with AsyncClient() as c:`` — a channel to ``socket`` or ``$SIDECRED_SOCKET``."""

    def __init__(self, socket=None, *, timeout: float = 10.0,
                 retry: Optional[RetryPolicy] = None):
        self._opts = _core.Options(timeout=timeout, retry=retry or RetryPolicy())
        self._channel = grpc.aio.insecure_channel(_core.target(socket),
                                                  options=list(_core.CHANNEL_OPTIONS))
        self._stub = pb.broker_pb2_grpc.BrokerStub(self._channel)

    async def _unary(self, method: str, request):
        fn = getattr(self._stub, method)
        failed = 0
        while True:
            try:
                return await fn(request, timeout=self._opts.timeout)
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
            await asyncio.sleep(delay)

    def session(self, *, ttl: Optional[float] = None,
                labels: Optional[Mapping[str, str]] = None) -> "_Opening":
        """``s = await client.session()``, or ``async with client.session() as s:``."""
        return _Opening(self, ttl, labels)

    async def _open(self, ttl, labels) -> "AsyncSession":
        r = await self._unary("OpenSession", _core.open_request(ttl, labels))
        log.debug("session %s opened", r.session_id)
        return AsyncSession(self, r.session_id, r.expires_at)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class _Opening:
    """Awaitable (the open session) and async context manager (closed on exit)."""

    def __init__(self, client: AsyncClient, ttl, labels):
        self._args = (client, ttl, labels)
        self._session: Optional[AsyncSession] = None

    def __await__(self):
        client, ttl, labels = self._args
        return client._open(ttl, labels).__await__()

    async def __aenter__(self) -> "AsyncSession":
        self._session = await self
        return self._session

    async def __aexit__(self, *exc) -> None:
        assert self._session is not None
        await self._session.__aexit__(*exc)


class AsyncSession:
    """An agent session; ``async with`` it (or the ``client.session()`` call) to close it."""

    def __init__(self, client: AsyncClient, session_id: str, expires_at: int):
        self._client = client
        self.id = session_id
        self.expires_at = expires_at
        self.closed = False
        self._values: List[SecretValue] = []

    async def get_secret(self, name: str) -> SecretValue:
        r = await self._client._unary("GetSecret", _core.get_request(self.id, name))
        v = _core.to_secret(r)
        self._values.append(v)
        return v

    def call(self, call_id: Optional[str] = None) -> "AsyncCall":
        return AsyncCall(self, call_id or _core.new_call_id())

    def watch(self, name: str) -> "AsyncWatch":
        req = pb.broker_pb2.WatchSecretRequest(name=name, session_id=self.id)
        return AsyncWatch(self._client._stub.WatchSecret(req))

    async def close(self) -> int:
        if self.closed:
            return 0
        self.closed = True
        try:
            req = pb.broker_pb2.CloseSessionRequest(session_id=self.id)
            return (await self._client._unary("CloseSession", req)).leases_released
        finally:
            for v in self._values:
                v.close()
            self._values.clear()

    async def __aenter__(self) -> "AsyncSession":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            await self.close()
        except _GONE as e:
            log.debug("session %s already gone: %s", self.id, e.code)
        except SidecredError as e:
            if exc_type is None:
                raise
            log.warning("closing session %s failed: %s", self.id, e.code)


class AsyncCall:
    """``async with session.call("call-1") as c:`` releases the call's leases on exit."""

    def __init__(self, session: AsyncSession, call_id: str):
        self.session = session
        self.id = call_id
        self._leases: List[str] = []
        self._values: List[SecretValue] = []

    async def get_secret(self, name: str) -> SecretValue:
        req = _core.get_request(self.session.id, name, self.id)
        v = _core.to_secret(await self.session._client._unary("GetSecret", req))
        self._leases.append(v.lease_id)
        self._values.append(v)
        return v

    async def release(self) -> int:
        leases, self._leases = self._leases, []
        first: Optional[SidecredError] = None
        try:
            for lease_id in leases:
                req = pb.broker_pb2.ReleaseLeaseRequest(lease_id=lease_id, session_id=self.session.id)
                try:
                    await self.session._client._unary("ReleaseLease", req)
                except _GONE:
                    pass
                except SidecredError as e:
                    first = first or e
        finally:
            for v in self._values:
                v.close()
            self._values.clear()
        if first is not None:
            raise first
        return len(leases)

    async def __aenter__(self) -> "AsyncCall":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            await self.release()
        except SidecredError as e:
            if exc_type is None:
                raise
            log.warning("releasing call %s failed: %s", self.id, e.code)


class AsyncWatch:
    """``async for event in session.watch("name"):``; ``cancel()`` stops it quietly."""

    def __init__(self, call):
        self._call = call
        self._cancelled = False

    def __aiter__(self) -> AsyncIterator[SecretEvent]:
        return self

    async def __anext__(self) -> SecretEvent:
        try:
            msg = await self._call.read()
        except asyncio.CancelledError:
            if self._cancelled:
                raise StopAsyncIteration from None
            raise
        except grpc.RpcError as e:
            if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                raise StopAsyncIteration from None
            raise from_rpc_error(e) from None
        if msg is grpc.aio.EOF:
            raise StopAsyncIteration
        return _core.to_event(msg)

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    async def __aenter__(self) -> "AsyncWatch":
        return self

    async def __aexit__(self, *exc) -> None:
        self.cancel()
