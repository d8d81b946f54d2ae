"""The example ToolRouter end to end: the real sidecred binary, loopback tool services."""

from __future__ import annotations

import logging
import time

import pytest

from conftest import TOOL_KEYS
from demo_tools import EgressProxy, ToolService, token_hash
from sidecred_client import AdminClient, Client, RevokedError
from tool_router import Tool, ToolRouter, Zone, ZoneMismatchError


@pytest.fixture
def tools():
    services = {
        "build": ToolService("build", TOOL_KEYS["tools/build-key"].encode()),
        "search": ToolService("search", TOOL_KEYS["tools/search-key"].encode()),
        "db": ToolService("db", TOOL_KEYS["tools/db-key"].encode()),
    }
    proxy = EgressProxy()
    yield services, proxy
    for s in list(services.values()) + [proxy]:
        s.stop()


def test_router_calls_each_zone_then_fails_cleanly_after_revocation(sidecar, tools, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    services, proxy = tools
    catalog = [
        Tool("build", Zone.INTERNAL, services["build"].url, "tools/build-key"),
        Tool("search", Zone.EXTERNAL, services["search"].url, "tools/search-key"),
        Tool("db", Zone.RESTRICTED, services["db"].url, "tools/db-key"),
    ]
    admin = AdminClient(str(sidecar.admin))
    with Client(str(sidecar.workload), timeout=5) as client:
        router = ToolRouter(client, catalog, egress_proxy=proxy.url)
        with router.session("agent-7") as session:
            for i, name in enumerate(["build", "search", "db"]):
                out = router.call(session, name, {"n": i}, call_id=f"call-{name}")
                assert out == {"tool": name, "echo": {"n": i}}
                seen = services[name].seen
                assert [s.authorized for s in seen] == [True], name
                assert seen[0].token_sha256 == token_hash(TOOL_KEYS[f"tools/{name}-key"].encode())
            assert proxy.log == [f"POST {services['search'].url[7:-1]} 200"], "external via egress"
            [info] = [s for s in admin.list_sessions() if s.session_id == session.id]
            assert info.lease_count == 0, "every call released its lease"

            admin.revoke_session(session.id, "agent compromised")
            revoked_at = time.time()
            for name in ["build", "search", "db"]:
                with pytest.raises(RevokedError, match="compromised"):
                    router.call(session, name, {"n": 99})
        for name, svc in services.items():
            after = [s for s in svc.seen if s.at >= revoked_at]
            assert after == [], f"{name} got a request after the revocation"
            assert len(svc.seen) == 1
    admin.close()

    out = capsys.readouterr()
    for key in TOOL_KEYS.values():
        for where, text in [("log", caplog.text), ("stdout", out.out + out.err),
                            ("sidecred", sidecar.logs()), ("audit", sidecar.audit_text()),
                            ("proxy", "\n".join(proxy.log))]:
            assert key not in text, f"credential in {where}"
    assert "calling tool=db zone=restricted call=call-db" in caplog.text


def test_router_refuses_a_credential_from_another_zone(sidecar, tools):
    services, _ = tools
    wrong = Tool("build", Zone.EXTERNAL, services["build"].url, "tools/build-key")
    with Client(str(sidecar.workload)) as client:
        router = ToolRouter(client, [wrong])
        with router.session("agent-8") as session:
            with pytest.raises(ZoneMismatchError):
                router.call(session, "build", {})
    assert services["build"].seen == []
