"""The asyncio client against the real sidecred binary (plain asyncio.run, no plugin)."""

from __future__ import annotations

import asyncio

import pytest

from conftest import TOOL_KEYS
from sidecred_client import (AsyncClient, DeniedError, NotFoundError, RetryPolicy,
                             SessionRevokedError, UnavailableError)
from test_client import lease_count


def test_async_session_call_and_watch(sidecar, admin):
    async def main():
        async with AsyncClient(str(sidecar.workload), timeout=5) as client:
            async with client.session(labels={"agent_id": "py-aio"}) as session:
                async with session.call("acall-1") as call:
                    v = await call.get_secret("tools/db-key")
                    assert v.text() == TOOL_KEYS["tools/db-key"]
                    assert v.zone == "restricted"
                    assert TOOL_KEYS["tools/db-key"] not in repr(v)
                    await call.get_secret("db/call")
                    assert lease_count(admin, session.id) == 2
                    buf = v._buf
                assert lease_count(admin, session.id) == 0
                assert buf == bytearray(len(buf)) and len(buf) > 0

                async with session.watch("app/a") as watch:
                    first = await watch.__anext__()
                    assert (first.kind, first.version) == ("CURRENT", "1")
                    admin.rotate("app/a", grace_seconds=2, value=b"value-a-2")
                    ev = await asyncio.wait_for(watch.__anext__(), 3)
                    assert (ev.kind, ev.version, ev.previous_version) == ("ROTATED", "2", "1")
                a = await session.get_secret("app/a")
                assert bytes(a.expose()) == b"value-a-2"
                sid = session.id
            assert a.closed, "session values wiped on exit"
            assert lease_count(admin, sid) is None
            s = await client.session(ttl=30)
            assert await s.close() == 0
            assert await s.close() == 0, "close is idempotent"

    asyncio.run(main())


def test_async_errors_are_typed(sidecar, admin, tmp_path):
    async def main():
        async with AsyncClient(str(sidecar.workload), timeout=5) as client:
            async with client.session() as session:
                with pytest.raises(NotFoundError):
                    await session.get_secret("app/nope")
                with pytest.raises(DeniedError):
                    await session.get_secret("ops/locked")
                watch = session.watch("app/a")
                assert (await watch.__anext__()).kind == "CURRENT"
                admin.revoke_session(session.id, "compromised")
                async with session.call() as call:
                    with pytest.raises(SessionRevokedError, match="compromised"):
                        await call.get_secret("tools/db-key")
                with pytest.raises(SessionRevokedError):
                    await asyncio.wait_for(watch.__anext__(), 3)
        policy = RetryPolicy(max_attempts=2, initial_backoff=0.01)
        async with AsyncClient(str(tmp_path / "none.sock"), retry=policy) as dead:
            with pytest.raises(UnavailableError, match="after 2 attempts"):
                await dead.session()

    asyncio.run(main())
