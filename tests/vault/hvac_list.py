"""hvac's KV v2 listing, run unchanged against OpenBao and against sidecred's Vault-compatible
endpoint (tests/vault_list.rs compares the two runs).

VAULT_ADDR is http://HOST:PORT or unix:///path/to.sock. With LOGIN_PATH set the client logs in
there (sidecred); otherwise it uses VAULT_TOKEN. Prints one JSON object: the keys of each
listing, or the error class of a failed one and whether its `errors` were empty (OpenBao's
answer for a path with nothing under it).
"""

import json
import os
import urllib.parse

import hvac
import requests_unixsocket
from hvac import exceptions


def client():
    addr = os.environ["VAULT_ADDR"]
    if addr.startswith("unix://"):
        url = "http+unix://" + urllib.parse.quote(addr[len("unix://"):], safe="")
        session = requests_unixsocket.Session()
    else:
        url, session = addr, None
    c = hvac.Client(url=url, session=session, timeout=10)
    if os.environ.get("LOGIN_PATH"):
        c.login("/v1/" + os.environ["LOGIN_PATH"], json={})
    else:
        c.token = os.environ["VAULT_TOKEN"]
    return c


def outcome(fn):
    try:
        return {"keys": fn()["data"]["keys"]}
    except exceptions.VaultError as e:
        return {"error": type(e).__name__, "errors_empty": not e.errors}


def main():
    c = client()
    out = {}
    for path in ["", "app", "app/", "app/nested", "tools", "team-b", "nope", "app/db"]:
        out["list:" + path] = outcome(
            lambda p=path: c.secrets.kv.v2.list_secrets(path=p, mount_point="secret")
        )
    # GET with list=true, as the Go client sends a LIST.
    out["get_list:app"] = outcome(
        lambda: c.adapter.get("/v1/secret/metadata/app", params={"list": "true"})
    )
    out["get_list_false:app/db"] = outcome(
        lambda: {
            "data": {
                "keys": sorted(
                    c.adapter.get("/v1/secret/metadata/app/db", params={"list": "false"})[
                        "data"
                    ].keys()
                )
            }
        }
    )
    out["list_data"] = outcome(lambda: c.adapter.list("/v1/secret/data/app/"))
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
