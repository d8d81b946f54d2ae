"""One hvac client, run unchanged against OpenBao and against sidecred's Vault-compatible
endpoint (tests/vault_api.rs compares the two runs).

VAULT_ADDR is http://HOST:PORT or unix:///path/to.sock. With LOGIN_PATH set the client logs in
there (sidecred); otherwise it uses VAULT_TOKEN (OpenBao). Prints one JSON object of what it
observed: values, versions, lease shapes, and the status class and shape of each error.

`hold` mode (argv[1] == "hold"): logs in, prints the token, reads once, waits for a line on
stdin, reads again and prints the outcome (the revocation test revokes in between).
"""

import json
import os
import sys
import urllib.parse

import hvac
import requests_unixsocket
from hvac import exceptions


def client(token=None):
    addr = os.environ["VAULT_ADDR"]
    if addr.startswith("unix://"):
        url = "http+unix://" + urllib.parse.quote(addr[len("unix://"):], safe="")
        session = requests_unixsocket.Session()
    else:
        url, session = addr, None
    c = hvac.Client(url=url, session=session, timeout=10)
    if token is not None:
        c.token = token
    elif os.environ.get("LOGIN_PATH"):
        c.login("/v1/" + os.environ["LOGIN_PATH"], json={"labels": {"client": "hvac"}})
    else:
        c.token = os.environ["VAULT_TOKEN"]
    return c


def failure(fn):
    """The error class, and whether its `errors` are a list of strings (Vault's shape)."""
    try:
        fn()
        return {"ok": True}
    except exceptions.VaultError as e:
        errs = e.errors
        return {
            "error": type(e).__name__,
            "errors_is_list_of_strings": isinstance(errs, list)
            and all(isinstance(x, str) for x in errs),
            "text": " ".join(errs) if isinstance(errs, list) else str(errs),
        }


def kv(c, path, version=None):
    r = c.secrets.kv.v2.read_secret_version(
        path=path, version=version, mount_point="secret", raise_on_deleted_version=True
    )
    return {"data": r["data"]["data"], "version": r["data"]["metadata"]["version"]}


def diff():
    c = client()
    out = {}
    out["health"] = {
        k: v
        for k, v in c.sys.read_health_status(method="GET").items()
        if k in ("initialized", "sealed", "standby")
    }
    me = c.auth.token.lookup_self()["data"]
    out["lookup_self"] = {
        "policies_is_list": isinstance(me["policies"], list),
        "ttl_is_int": isinstance(me["ttl"], int),
        "id_is_token": me["id"] == c.token,
    }
    out["kv_current"] = kv(c, "app/db")
    out["kv_v1"] = kv(c, "app/db", version=1)
    out["kv_single_field"] = kv(c, "tools/gh")
    meta = c.secrets.kv.v2.read_secret_metadata(path="app/db", mount_point="secret")
    out["metadata_current_version"] = meta["data"]["current_version"]
    out["kv_missing"] = failure(lambda: kv(c, "app/missing"))
    out["kv_bad_version"] = failure(
        lambda: c.adapter.get("/v1/secret/data/app/db", params={"version": "abc"})
    )
    bogus = client(token="s.0123456789abcdefghijklmn")
    out["kv_bogus_token"] = failure(lambda: kv(bogus, "app/db"))
    leased = c.read("database/creds/ro")
    lease_id = leased["lease_id"]
    out["leased"] = {
        "keys": sorted(leased["data"].keys()),
        "has_lease_id": bool(lease_id) and lease_id.startswith("database/creds/ro/"),
        "lease_duration_positive": leased["lease_duration"] > 0,
        "renewable": leased["renewable"],
    }
    renewed = c.sys.renew_lease(lease_id=lease_id, increment=60)
    out["renew"] = {
        "same_lease": renewed["lease_id"] == lease_id,
        "lease_duration_positive": renewed["lease_duration"] > 0,
    }
    c.sys.revoke_lease(lease_id=lease_id)
    out["renew_after_revoke"] = failure(
        lambda: c.sys.renew_lease(lease_id=lease_id, increment=60)
    )
    c.auth.token.revoke_self()
    out["after_revoke_self"] = failure(lambda: kv(c, "app/db"))
    # The credential values differ per server; their text never goes in the comparison.
    print(json.dumps(out, sort_keys=True))


def hold():
    c = client()
    print(json.dumps({"token": c.token}), flush=True)
    first = kv(c, "app/db")["version"]
    sys.stdin.readline()
    print(json.dumps({"first_version": first, "second": failure(lambda: kv(c, "app/db"))}))


if __name__ == "__main__":
    hold() if sys.argv[1:] == ["hold"] else diff()
