"""Starts the real sidecred binary ($SIDECRED_BIN) on temp sockets with a temp config,
mirroring tests/common/mod.rs; killed at teardown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "examples"))

# Distinctive values: tests assert they never show up in logs, reprs or errors.
TOOL_KEYS = {
    "tools/build-key": "build-key-canary-7f1e",
    "tools/search-key": "search-key-canary-92ab",
    "tools/db-key": "db-key-canary-c03d",
}

BODY = """
[backends.dev]
kind = "dev"
values = {{ "static/a" = "value-a-1", "short" = "short-lived", "build" = "{build}", "search" = "{search}", "dbkey" = "{db}" }}
dynamic_ttl = "60s"
{dev_extra}

[[secret]]
name = "app/a"
backend = "dev"
path = "static/a"
zone = "internal"
ttl = "60s"
grace = "2s"

[[secret]]
name = "db/call"
backend = "dev"
path = "dbcall"
zone = "restricted"
scope = "call"
options = {{ dynamic = true }}

[[secret]]
name = "ops/locked"
backend = "dev"
path = "static/a"
zone = "internal"

[[secret]]
name = "tools/build-key"
backend = "dev"
path = "build"
zone = "internal"
ttl = "60s"

[[secret]]
name = "tools/search-key"
backend = "dev"
path = "search"
zone = "external"
ttl = "60s"

[[secret]]
name = "tools/db-key"
backend = "dev"
path = "dbkey"
zone = "restricted"
scope = "call"
ttl = "60s"

[[policy.workload]]
name = "test-callers"
uids = [{uid}]
secrets = ["app/*", "db/*", "tools/*"]

[[policy.admin]]
name = "test-admin"
uids = [{uid}]
actions = ["*"]
"""


def sidecred_bin() -> str:
    b = os.environ.get("SIDECRED_BIN", "")
    if not b or not os.access(b, os.X_OK):
        raise RuntimeError(
            "SIDECRED_BIN must name the built sidecred binary (scripts/test sets it; "
            "else: cargo build && export SIDECRED_BIN=$CARGO_TARGET_DIR/debug/sidecred)")
    return b


def _accepts(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Sidecar:
    def __init__(self, root: Path, dev_extra: str = "", log_level: str = "trace"):
        self.root = root
        self.workload = root / "w" / "workload.sock"
        self.admin = root / "a" / "admin.sock"
        self.audit = root / "audit.jsonl"
        self.stderr = root / "stderr.log"
        body = BODY.format(build=TOOL_KEYS["tools/build-key"], search=TOOL_KEYS["tools/search-key"],
                           db=TOOL_KEYS["tools/db-key"], uid=os.getuid(), dev_extra=dev_extra)
        config = (
            f'[server]\nworkload_socket = "{self.workload}"\nworkload_socket_mode = "0666"\n'
            f'admin_socket = "{self.admin}"\nstate_dir = "{root / "state"}"\n\n'
            f'[log]\nlevel = "{log_level}"\n\n[audit]\npath = "{self.audit}"\nfail_closed = false\n'
            + body)
        self.config = root / "sidecred.toml"
        self.config.write_text(config)
        with open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen([sidecred_bin(), "serve", "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        end = time.monotonic() + 20
        while not (_accepts(self.workload) and _accepts(self.admin)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecred exited early:\n{self.logs()}")
            if time.monotonic() > end:
                self.kill()
                raise RuntimeError(f"sidecred did not start serving:\n{self.logs()}")
            time.sleep(0.02)

    def logs(self) -> str:
        return self.stderr.read_text(errors="replace")

    def audit_text(self) -> str:
        return self.audit.read_text() if self.audit.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def start_sidecar():
    """A factory: ``start_sidecar(dev_extra='latency = "2s"')``; all are killed at the end."""
    started = []
    with tempfile.TemporaryDirectory(prefix="sidecred-py-") as d:
        def start(dev_extra: str = "") -> Sidecar:
            root = Path(d) / str(len(started))
            root.mkdir()
            sc = Sidecar(root, dev_extra)
            started.append(sc)
            return sc

        try:
            yield start
        finally:
            for sc in started:
                sc.kill()


@pytest.fixture
def sidecar(start_sidecar) -> Sidecar:
    return start_sidecar()


@pytest.fixture
def admin(sidecar):
    from sidecred_client import AdminClient

    with AdminClient(str(sidecar.admin), timeout=5) as a:
        yield a
