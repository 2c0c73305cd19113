#!/usr/bin/env bash
# Prometheus (Debian package `prometheus`) discovers svcmeta's instances with consul_sd_configs.
#
# Installs Prometheus with apt-get when it is missing (root), builds svcmeta (debug) unless
# SVCMETA_BIN names a binary, starts `svcmeta serve --store memory` on a free loopback port,
# registers instances (Consul API and native API), starts Prometheus on another free loopback
# port with a consul_sd_configs job pointed at svcmeta, polls /api/v1/targets until the targets
# appear (bounded) and asserts their __meta_consul_* labels. Every address involved is on
# loopback; only Debian's package mirror is reached (for the install).
#
# Debian builds Prometheus without Consul service discovery (bookworm's 2.42 and trixie's
# 2.53 alike: "Disable Consul SD until its Debian package is back in shape"). When the
# installed Prometheus rejects consul_sd_configs, the script says so loudly and runs
# `prometheus_check.py replay` instead: the requests and label mapping of Prometheus' Consul
# discovery, replayed in Python against the same expectations. Set
# SVCMETA_REQUIRE_REAL_PROMETHEUS=1 to fail instead.
set -euo pipefail
cd "$(dirname "$0")/../.."

WORK=target/prometheus-client
rm -rf "$WORK"
mkdir -p "$WORK"

if ! command -v prometheus >/dev/null 2>&1; then
    echo "== installing prometheus (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
prometheus --version 2>&1 | head -n 1

BIN="${SVCMETA_BIN:-}"
if [ -z "$BIN" ]; then
    cargo build --quiet -p svcmeta
    BIN=target/debug/svcmeta
fi

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

# svcmeta on port 0: the kernel picks a free port and svcmeta prints the address it bound.
printf 'node_name = "prometheus-test-node"\ndatacenter = "dc1"\n' >"$WORK/svcmeta.toml"
"$BIN" serve --store memory --listen 127.0.0.1:0 --config "$WORK/svcmeta.toml" \
    >"$WORK/svcmeta.log" 2>&1 &
PIDS+=($!)
SVCMETA=""
for _ in $(seq 1 100); do
    SVCMETA=$(sed -n 's|^svcmeta listening on http://||p' "$WORK/svcmeta.log" | head -n 1)
    [ -n "$SVCMETA" ] && break
    sleep 0.1
done
[ -n "$SVCMETA" ] || { cat "$WORK/svcmeta.log"; echo "svcmeta did not start" >&2; exit 1; }

python3 tests/clients/prometheus_check.py register "$SVCMETA"

cat >"$WORK/prometheus.yml" <<CONFIG
global:
  scrape_interval: 1m
scrape_configs:
  - job_name: svcmeta
    consul_sd_configs:
      - server: "$SVCMETA"
        refresh_interval: 1s
CONFIG

if ! promtool check config "$WORK/prometheus.yml" >"$WORK/promtool.log" 2>&1; then
    if grep -q "consul_sd_configs not found" "$WORK/promtool.log"; then
        echo "!! this Prometheus build has no Consul service discovery (Debian patches it out);" >&2
        echo "!! replaying Prometheus' Consul discovery requests and labels instead" >&2
        if [ "${SVCMETA_REQUIRE_REAL_PROMETHEUS:-0}" = 1 ]; then
            exit 1
        fi
        timeout 100 python3 tests/clients/prometheus_check.py replay "$SVCMETA"
        exit 0
    fi
    cat "$WORK/promtool.log" >&2
    exit 1
fi

PROM_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prometheus \
    --config.file="$WORK/prometheus.yml" \
    --storage.tsdb.path="$WORK/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" \
    >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)

echo "== prometheus at 127.0.0.1:$PROM_PORT discovering svcmeta at $SVCMETA"
if ! timeout 100 python3 tests/clients/prometheus_check.py targets "127.0.0.1:$PROM_PORT" 90; then
    echo "--- prometheus log" >&2
    tail -n 30 "$WORK/prometheus.log" >&2
    exit 1
fi
