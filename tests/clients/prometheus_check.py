"""Prometheus consul_sd_configs against svcmeta: register instances, then assert the targets.

Run by tests/clients/run-prometheus.sh. Python standard library only.

    prometheus_check.py register SVCMETA_ADDRESS     registers the instances
    prometheus_check.py targets  PROMETHEUS_ADDRESS  waits for them in /api/v1/targets
    prometheus_check.py replay   SVCMETA_ADDRESS     Prometheus' Consul discovery, replayed

`replay` exists because Debian builds Prometheus without Consul service discovery (its
changelog: "Disable Consul SD until its Debian package is back in shape"; still so in
2.53.3+ds1-2). It performs the requests of Prometheus 2.x's discovery/consul/consul.go
(agent/self for the datacenter, a blocking catalog/services watch, a blocking
health/service watch per service, with `stale` and `wait`), parses the answers with the
strictness of Go's JSON decoding into the consul/api types and of the Go client's header
parsing, and builds the same labels. It is a stand-in for the real client, not one.

Every instance address is on loopback, so Prometheus' scrapes never leave the machine.
"""

import json
import re
import sys
import threading
import time
import urllib.request

# (id, service, port, tags, meta) registered through the Consul API.
CONSUL_INSTANCES = [
    ("payments-1", "payments", 19101, ["v2", "primary"], {"team": "core", "env": "prod"}),
    ("payments-2", "payments", 19102, ["v2"], {"team": "core", "env": "prod"}),
]
# One native registration: version, environment and region show as service metadata.
NATIVE_INSTANCE = {
    "id": "ledger-1",
    "service": "ledger",
    "address": "127.0.0.1",
    "port": 19103,
    "tags": ["canary"],
    "version": "1.4.0",
    "environment": "staging",
    "region": "us-east",
    "meta": {"owner": "fin"},
}


def request(method: str, url: str, body=None, timeout: float = 10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return response.status, response.read()


def consul_get(url: str, timeout: float = 30):
    """A read as the Go client makes it: 200 only, and the three X-Consul headers parsed as
    api.parseQueryMeta does (index and last contact unsigned integers, known leader a bool)."""
    with urllib.request.urlopen(urllib.request.Request(url), timeout=timeout) as response:
        assert response.status == 200, f"{url}: {response.status}"
        index = response.headers.get("X-Consul-Index")
        assert index is not None and index.isdigit() and int(index) >= 1, f"{url}: index {index!r}"
        contact = response.headers.get("X-Consul-LastContact")
        assert contact is not None and contact.isdigit(), f"{url}: last contact {contact!r}"
        leader = response.headers.get("X-Consul-KnownLeader")
        assert leader in ("true", "false"), f"{url}: known leader {leader!r}"
        return int(index), json.loads(response.read())


def expect_type(value, kind, where):
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "strs": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "strmap": isinstance(value, dict) and all(isinstance(v, str) for v in value.values()),
    }[kind]
    # Go decodes null into a nil slice or map, which is fine for these fields.
    assert ok or (value is None and kind in ("strs", "strmap")), f"{where}: {value!r} is not {kind}"
    return value or ({} if kind == "strmap" else [] if kind == "strs" else value)


def sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def aggregated_status(checks) -> str:
    """consul/api HealthChecks.AggregatedStatus."""
    statuses = [c["Status"] for c in checks]
    if "critical" in statuses or "maintenance" in statuses:
        return "critical"
    if "warning" in statuses:
        return "warning"
    return "passing"


def replay(address: str):
    """Prometheus 2.x consul discovery (no `services`, `tags` or `datacenter` configured)."""
    base = f"http://{address}/v1"
    with urllib.request.urlopen(f"{base}/agent/self", timeout=10) as response:
        datacenter = json.loads(response.read())["Config"]["Datacenter"]
    assert isinstance(datacenter, str) and datacenter, datacenter
    wait = "wait=120000ms"
    index, services = consul_get(f"{base}/catalog/services?{wait}&stale=")
    assert isinstance(services, dict), services
    # The watch blocks: with the index it got and nothing changing, it waits (2s here).
    started = time.monotonic()
    same, _ = consul_get(f"{base}/catalog/services?index={index}&wait=2000ms&stale=")
    assert same == index and time.monotonic() - started >= 1.5, "catalog watch did not block"
    targets = {}
    for name, tags in services.items():
        expect_type(tags, "strs", f"services[{name}]")
        _, nodes = consul_get(f"{base}/health/service/{name}?{wait}&stale=")
        for n, entry in enumerate(nodes):
            where = f"health/service/{name}[{n}]"
            node, service, checks = entry["Node"], entry["Service"], entry["Checks"]
            node_address = expect_type(node["Address"], "str", f"{where}.Node.Address")
            service_address = expect_type(service["Address"], "str", f"{where}.Service.Address")
            port = expect_type(service["Port"], "int", f"{where}.Service.Port")
            service_tags = expect_type(service["Tags"], "strs", f"{where}.Service.Tags")
            for c in checks:
                expect_type(c["Status"], "str", f"{where}.Checks.Status")
            host = service_address or node_address
            labels = {
                "__meta_consul_service": name,
                "__meta_consul_dc": datacenter,
                "__address__": f"{host}:{port}",
                "__meta_consul_address": node_address,
                "__meta_consul_node": expect_type(node["Node"], "str", f"{where}.Node.Node"),
                "__meta_consul_tags": "," + ",".join(service_tags) + ",",
                "__meta_consul_service_address": service_address,
                "__meta_consul_service_port": str(port),
                "__meta_consul_service_id": expect_type(service["ID"], "str", f"{where}.Service.ID"),
                "__meta_consul_health": aggregated_status(checks),
            }
            for key, value in expect_type(node.get("Meta"), "strmap", f"{where}.Node.Meta").items():
                labels["__meta_consul_metadata_" + sanitize(key)] = value
            for key, value in expect_type(service.get("Meta"), "strmap", f"{where}.Service.Meta").items():
                labels["__meta_consul_service_metadata_" + sanitize(key)] = value
            tagged = expect_type(node.get("TaggedAddresses"), "strmap", f"{where}.Node.TaggedAddresses")
            for key, value in tagged.items():
                labels["__meta_consul_tagged_address_" + sanitize(key)] = value
            targets[labels["__meta_consul_service_id"]] = labels
    # A per-service watch wakes when an instance of that service changes.
    service_index, _ = consul_get(f"{base}/health/service/ledger?{wait}&stale=")
    woke = {}

    def watch():
        woke["index"], woke["nodes"] = consul_get(
            f"{base}/health/service/ledger?index={service_index}&wait=30000ms&stale="
        )

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.5)
    assert "index" not in woke, "the health watch returned without a change"
    changed = dict(NATIVE_INSTANCE, tags=["canary", "rollout"])
    request("PUT", f"http://{address}/api/v1/instances/{changed['id']}", changed)
    watcher.join(timeout=20)
    assert woke.get("index", 0) > service_index, f"the health watch did not wake: {woke}"
    assert woke["nodes"][0]["Service"]["Tags"] == ["canary", "rollout"], woke
    request("PUT", f"http://{address}/api/v1/instances/{changed['id']}", NATIVE_INSTANCE)
    return targets


def register(address: str) -> None:
    base = f"http://{address}"
    for sid, name, port, tags, meta in CONSUL_INSTANCES:
        status, _ = request(
            "PUT",
            f"{base}/v1/agent/service/register",
            {"ID": sid, "Name": name, "Address": "127.0.0.1", "Port": port, "Tags": tags,
             "Meta": meta, "Check": {"TTL": "5m", "Status": "passing"}},
        )
        assert status == 200, f"register {sid}: {status}"
    # payments-2 turns warning: Prometheus reports the aggregate check status.
    status, _ = request("PUT", f"{base}/v1/agent/check/warn/service:payments-2?note=slow")
    assert status == 200, status
    status, _ = request("PUT", f"{base}/api/v1/instances/{NATIVE_INSTANCE['id']}", NATIVE_INSTANCE)
    assert status in (200, 201), status
    print(f"registered {len(CONSUL_INSTANCES) + 1} instances at {address}")


def expected():
    want = {}
    for sid, name, port, tags, meta in CONSUL_INSTANCES:
        labels = {
            "__address__": f"127.0.0.1:{port}",
            "__meta_consul_service": name,
            "__meta_consul_service_id": sid,
            "__meta_consul_service_address": "127.0.0.1",
            "__meta_consul_service_port": str(port),
            "__meta_consul_tags": "," + ",".join(tags) + ",",
            "__meta_consul_dc": "dc1",
            "__meta_consul_node": "prometheus-test-node",
            "__meta_consul_address": "127.0.0.1",
            "__meta_consul_tagged_address_lan": "127.0.0.1",
            "__meta_consul_health": "warning" if sid == "payments-2" else "passing",
        }
        for key, value in meta.items():
            labels[f"__meta_consul_service_metadata_{key}"] = value
        want[sid] = labels
    native = NATIVE_INSTANCE
    want[native["id"]] = {
        "__address__": f"127.0.0.1:{native['port']}",
        "__meta_consul_service": native["service"],
        "__meta_consul_service_id": native["id"],
        "__meta_consul_tags": ",canary,",
        "__meta_consul_health": "passing",
        "__meta_consul_service_metadata_owner": "fin",
        "__meta_consul_service_metadata_version": native["version"],
        "__meta_consul_service_metadata_env": native["environment"],
        "__meta_consul_service_metadata_region": native["region"],
    }
    return want


def targets(address: str, timeout: float) -> None:
    want = expected()
    deadline = time.monotonic() + timeout
    found = {}
    while time.monotonic() < deadline:
        try:
            _, body = request("GET", f"http://{address}/api/v1/targets?state=active")
            active = json.loads(body)["data"]["activeTargets"]
            found = {
                t["discoveredLabels"].get("__meta_consul_service_id"): t["discoveredLabels"]
                for t in active
                if t.get("scrapePool") == "svcmeta"
            }
            if set(want) <= set(found):
                break
        except OSError:
            pass  # Prometheus is still starting
        time.sleep(0.5)
    compare(found, f"prometheus discovered (targets not discovered within {timeout}s)")


def compare(found, what: str) -> None:
    want = expected()
    missing = set(want) - set(found)
    assert not missing, f"{what}: missing {sorted(missing)}; found {found}"
    checks = 0
    for sid, labels in want.items():
        for key, value in labels.items():
            actual = found[sid].get(key)
            assert actual == value, f"{sid}: {key} is {actual!r}, expected {value!r}; all: {found[sid]}"
            checks += 1
    extra = set(found) - set(want)
    assert not extra, f"unexpected targets: {sorted(extra)}"
    print(f"{what.split(' (')[0]} {len(want)} targets: {checks} passed, 0 failed")


def main() -> None:
    command, address = sys.argv[1], sys.argv[2]
    if command == "register":
        register(address)
    elif command == "replay":
        compare(replay(address), "consul discovery replay")
    elif command == "targets":
        targets(address, float(sys.argv[3]) if len(sys.argv) > 3 else 60.0)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
