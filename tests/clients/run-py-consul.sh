#!/usr/bin/env bash
# py-consul, the maintained Python Consul client, against svcmeta's Consul API.
#
# Creates a virtualenv under target/ (python3 -m venv), installs py-consul from PyPI into it,
# builds svcmeta (debug) unless SVCMETA_BIN names a binary, starts
# `svcmeta serve --store memory` on a free loopback port, runs tests/clients/py_consul_test.py
# against it, and stops the server. Only PyPI and loopback are reached.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY_CONSUL_VERSION="${PY_CONSUL_VERSION:-1.8.0}"
VENV=target/py-consul-venv
LOG=target/py-consul-svcmeta.log

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import consul" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "py-consul==$PY_CONSUL_VERSION"
fi

BIN="${SVCMETA_BIN:-}"
if [ -z "$BIN" ]; then
    cargo build --quiet -p svcmeta
    BIN=target/debug/svcmeta
fi

# Port 0: the kernel picks a free port and svcmeta prints the address it bound.
"$BIN" serve --store memory --listen 127.0.0.1:0 >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT

ADDRESS=""
for _ in $(seq 1 100); do
    ADDRESS=$(sed -n 's|^svcmeta listening on http://||p' "$LOG" | head -n 1)
    [ -n "$ADDRESS" ] && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$LOG"; echo "svcmeta exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$ADDRESS" ] || { cat "$LOG"; echo "svcmeta did not start" >&2; exit 1; }

echo "== py-consul $PY_CONSUL_VERSION against svcmeta at $ADDRESS"
timeout 120 "$VENV/bin/python" tests/clients/py_consul_test.py "$ADDRESS"
