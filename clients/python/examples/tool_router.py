"""An example tool router on sidecred: each tool carries a zone annotation; each call
fetches the tool's credential inside the agent session under a call id, injects it, and
releases the lease (and wipes the value) when the call ends.

Correct by construction:
- the credential exists only inside ``with session.call(...)``; leaving it releases the
  lease and zeroes the buffer, whatever happens;
- it is fetched before any request is built, so a revoked session raises
  ``SessionRevokedError`` and no request reaches the tool;
- the credential's zone must match the tool's annotation (a misrouted secret fails closed);
- logs carry tool, zone, call id, lease id and version: never the credential. The header
  is unredirected, so a redirect cannot carry it to another host.

Run against ``sidecred serve --config config/dev.toml`` (SIDECRED_SOCKET set to its workload
socket, ``${XDG_RUNTIME_DIR:-$HOME/.cache}/sidecred-dev/sock/workload.sock`` by default):
    python clients/python/examples/tool_router.py
"""

from __future__ import annotations

import enum
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional

from sidecred_client import Client, Session, SidecredError

log = logging.getLogger("tool_router")


class Zone(str, enum.Enum):
    INTERNAL = "internal"      # called directly
    EXTERNAL = "external"      # called through the egress proxy, which logs it
    RESTRICTED = "restricted"  # called directly, with a call-scoped credential


@dataclass(frozen=True)
class Tool:
    name: str
    zone: Zone
    url: str
    secret: str  # the sidecred secret that authorizes calls to this tool


class ZoneMismatchError(SidecredError):
    code = "zone-mismatch"


class ToolError(Exception):
    """The tool answered with an error status (its body is not echoed: it may be sensitive)."""

    def __init__(self, tool: str, status: int):
        super().__init__(f"tool {tool!r} answered HTTP {status}")
        self.status = status


class ToolRouter:
    def __init__(self, client: Client, tools: Iterable[Tool], *,
                 egress_proxy: Optional[str] = None, timeout: float = 5.0):
        self.client = client
        self.tools: Dict[str, Tool] = {t.name: t for t in tools}
        self.timeout = timeout
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._egress = urllib.request.build_opener(urllib.request.ProxyHandler(
            {"http": egress_proxy, "https": egress_proxy} if egress_proxy else {}))

    def session(self, agent_id: str) -> Session:
        """One sidecred session per agent session; use it as a context manager."""
        return self.client.session(labels={"agent_id": agent_id})

    def call(self, session: Session, tool_name: str, payload: Mapping,
             call_id: Optional[str] = None) -> dict:
        tool = self.tools[tool_name]
        with session.call(call_id) as call:
            cred = call.get_secret(tool.secret)  # raises before any request on revocation
            if cred.zone != tool.zone.value:
                raise ZoneMismatchError(
                    f"secret {tool.secret!r} is zone {cred.zone!r}; tool {tool.name!r} is {tool.zone.value!r}")
            req = urllib.request.Request(tool.url, data=json.dumps(payload).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
            req.add_unredirected_header("Authorization", "Bearer " + cred.text())
            opener = self._egress if tool.zone is Zone.EXTERNAL else self._direct
            log.info("calling tool=%s zone=%s call=%s lease=%s version=%s",
                     tool.name, tool.zone.value, call.id, cred.lease_id, cred.version)
            try:
                with opener.open(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                raise ToolError(tool.name, e.code) from None
            finally:
                del req  # the only other holder of the header text
        # leaving the call released the lease and zeroed the credential's buffer


def main() -> None:
    """A demo against config/dev.toml: two tools whose keys are that file's dev values."""
    from demo_tools import EgressProxy, ToolService

    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    build = ToolService("build", b"dev-build-api-key-0001")
    search = ToolService("search", b"dev-search-key-0001")
    proxy = EgressProxy()
    tools = [Tool("build", Zone.INTERNAL, build.url, "build/api-key"),
             Tool("search", Zone.EXTERNAL, search.url, "tools/search-key")]
    try:
        with Client() as client:
            router = ToolRouter(client, tools, egress_proxy=proxy.url)
            with router.session("demo-agent") as session:
                print(router.call(session, "build", {"target": "//app"}))
                print(router.call(session, "search", {"q": "sidecred"}))
        print("egress log:", proxy.log)
    finally:
        for s in (build, search, proxy):
            s.stop()


if __name__ == "__main__":
    main()
