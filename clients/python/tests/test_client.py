"""The blocking client against the real sidecred binary."""

from __future__ import annotations

import logging
import pickle
import time

import pytest

from conftest import TOOL_KEYS
from sidecred_client import (AdminClient, Client, ConfigError, DeadlineExceededError, DeniedError,
                             InvalidArgumentError, NotFoundError, RetryPolicy, RevokedError,
                             SecretValue, SessionRevokedError, UnavailableError)


def lease_count(admin, session_id):
    for s in admin.list_sessions():
        if s.session_id == session_id:
            return s.lease_count
    return None


def test_session_and_call_lifecycle(sidecar, admin):
    with Client(str(sidecar.workload), timeout=5) as client:
        with client.session(ttl=120, labels={"agent_id": "py-sync"}) as session:
            assert session.id.startswith("ses_")
            assert abs(session.expires_at - time.time() - 120) <= 2
            a = session.get_secret("app/a")
            assert bytes(a.expose()) == b"value-a-1"
            assert (a.version, a.zone) == ("1", "internal")
            with session.call("call-1") as call:
                assert call.id == "call-1"
                c1 = call.get_secret("db/call")
                c1_again = call.get_secret("db/call")
                assert c1.equals(c1_again.expose())
                shared = call.get_secret("app/a")
                assert shared.zone == "internal"
                assert lease_count(admin, session.id) == 4
                kept = c1._buf
            assert lease_count(admin, session.id) == 1, "call leases released on exit"
            assert c1.closed and shared.closed and not a.closed
            assert kept == bytearray(len(kept)) and len(kept) > 0
            # The same call id again gets a new credential: the old one died on release.
            with session.call("call-1") as again:
                assert not again.get_secret("db/call").equals(bytes(len(kept)))
            call2 = session.call()
            assert call2.id.startswith("call-")
            call2.get_secret("db/call")
            assert call2.release() == 1
            sid = session.id
        assert lease_count(admin, sid) is None, "session gone after exit"
        assert a.closed, "session values wiped on exit"
    assert '"event":"lease_release"' in sidecar.audit_text()
    assert '"event":"session_close"' in sidecar.audit_text()


def test_repr_never_shows_the_value_and_exit_wipes_the_buffer(sidecar, caplog):
    caplog.set_level(logging.DEBUG)
    with Client(str(sidecar.workload)) as client, client.session() as session:
        with session.call() as call:
            v = call.get_secret("tools/search-key")
            key = TOOL_KEYS["tools/search-key"]
            assert v.text() == key
            shown = [repr(v), str(v), f"{v}", f"{v!r}", "%s" % v, "{}".format(v), repr([v]),
                     repr({"k": v}), f"{v:>40}"]
            logging.getLogger("test").info("value %s %r", v, v)
            for s in shown:
                assert key not in s and "redacted" in s, s
            with pytest.raises(TypeError):
                pickle.dumps(v)
            with pytest.raises(TypeError):
                bytes(v)
            buf = v._buf
            assert bytes(buf) == key.encode()
        assert buf == bytearray(len(key)), "buffer not zeroed after the call"
        assert v.closed and "closed" in repr(v)
        with pytest.raises(ValueError):
            v.expose()
    assert key not in caplog.text
    assert key not in sidecar.logs() and key not in sidecar.audit_text()
    standalone = SecretValue(b"abc")
    with standalone as s:
        view = s.expose()
        assert bytes(view) == b"abc"
    assert bytes(view) == b"\0\0\0", "views see the wiped buffer"


def test_watch_receives_a_rotation(sidecar, admin):
    with Client(str(sidecar.workload)) as client, client.session() as session:
        with session.watch("app/a") as watch:
            first = next(watch)
            assert (first.kind, first.version) == ("CURRENT", "1")
            rot = admin.rotate("app/a", grace_seconds=2, value=b"value-a-2")
            assert (rot.version, rot.previous_version) == ("2", "1")
            ev = next(watch)
            assert (ev.kind, ev.version, ev.previous_version) == ("ROTATED", "2", "1")
            assert ev.previous_retires_at >= ev.at
        with session.call() as call:
            v = call.get_secret("app/a")
            assert bytes(v.expose()) == b"value-a-2"
            assert v.previous is not None and v.previous.version == "1"
            assert bytes(v.previous.expose()) == b"value-a-1"
            prev_buf = v.previous._buf
        assert prev_buf == bytearray(len(prev_buf)), "previous version wiped too"


def test_errors_map_to_typed_exceptions(sidecar, admin):
    with Client(str(sidecar.workload), timeout=5) as client:
        session = client.session()
        with pytest.raises(NotFoundError, match="app/missing"):
            session.get_secret("app/missing")
        with pytest.raises(DeniedError):
            session.get_secret("ops/locked")
        with pytest.raises(InvalidArgumentError, match="call"):
            session.get_secret("db/call")
        call = session.call("c-before")
        call.get_secret("db/call")
        watch = session.watch("app/a")
        assert next(watch).kind == "CURRENT"
        admin.revoke_session(session.id, "compromised")
        with pytest.raises(SessionRevokedError, match="compromised") as e:
            session.get_secret("app/a")
        assert isinstance(e.value, RevokedError) and not e.value.transient
        with pytest.raises(SessionRevokedError):
            call.get_secret("db/call")
        assert call.release() == 1, "leases gone with the session count as released"
        with pytest.raises(SessionRevokedError):
            next(watch)
        with pytest.raises(SessionRevokedError):
            session.close()
        with client.session() as s2:  # exit tolerates a revoked session
            admin.revoke_session(s2.id, "again")


def test_unavailable_is_retried_a_bounded_number_of_times(tmp_path, monkeypatch):
    missing = tmp_path / "none.sock"
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.2)
    t = time.monotonic()
    with Client(str(missing), retry=policy, timeout=2) as client:
        with pytest.raises(UnavailableError, match="after 3 attempts") as e:
            client.session()
    took = time.monotonic() - t
    assert e.value.transient
    assert 0.075 <= took < 3, took
    with pytest.raises(ConfigError):
        Client("relative.sock")
    monkeypatch.delenv("SIDECRED_SOCKET", raising=False)
    with pytest.raises(ConfigError, match="SIDECRED_SOCKET"):
        Client()


def test_socket_from_env_and_deadline_not_retried(start_sidecar, monkeypatch):
    slow = start_sidecar('latency = "3s"')
    monkeypatch.setenv("SIDECRED_SOCKET", str(slow.workload))
    with Client(timeout=0.3) as client, client.session() as session:
        t = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            session.get_secret("app/a")
        assert time.monotonic() - t < 1.5


def test_backoff_table():
    p = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=0.3)
    cases = [(0, 0.0, None), (1, 0.0, 0.05), (1, 0.999, 0.09995), (2, 0.0, 0.1),
             (3, 0.999, 0.29985), (4, 0.0, 0.15), (5, 0.0, None), (500, 0.0, None)]
    for failed, jitter, want in cases:
        got = p.backoff(failed, jitter)
        assert (got is None and want is None) or abs(got - want) < 1e-9, (failed, got)
    assert RetryPolicy(max_attempts=10**6, initial_backoff=0.1, max_backoff=0.3).backoff(999, 0) == 0.15


def test_admin_client_errors_are_typed(sidecar):
    with AdminClient(str(sidecar.admin)) as a:
        with pytest.raises(InvalidArgumentError):
            a.revoke_session("not a valid id")
