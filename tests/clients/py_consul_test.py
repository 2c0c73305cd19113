"""py-consul (PyPI `py-consul`, import `consul`) against a running svcmeta.

Run by tests/clients/run-py-consul.sh, which starts `svcmeta serve --store memory` on a free
loopback port and passes it as the first argument (host:port). Every answer is asserted;
the first failed assertion exits non-zero.
"""

import sys
import threading
import time

import consul


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    c = consul.Consul(host=host, port=int(port))
    checks = 0

    def check(condition, message):
        nonlocal checks
        checks += 1
        if not condition:
            raise AssertionError(message)

    # The agent describes itself as a one-node Consul.
    me = c.agent.self()
    check(me["Config"]["Datacenter"] == "dc1", f"datacenter: {me['Config']}")
    check(me["Config"]["NodeName"], "a node name")
    check(c.status.leader().endswith(":8300"), "a leader")

    # Register two instances with tags, meta and a TTL check, and one without a check.
    for n, tags in ((1, ["v2", "primary"]), (2, ["v2"])):
        ok = c.agent.service.register(
            "payments",
            service_id=f"payments-{n}",
            address=f"10.0.0.{n}",
            port=8080 + n,
            tags=tags,
            meta={"env": "prod", "region": "eu-west", "team": "core"},
            check=consul.Check.ttl("30s"),
            replace_existing_checks=True,
        )
        check(ok is True, f"register payments-{n}: {ok}")
    check(
        c.agent.service.register("ledger", service_id="ledger-1", port=9000, tags=["canary"]),
        "register ledger-1",
    )

    services = c.agent.services()
    check(
        set(services) == {"payments-1", "payments-2", "ledger-1"},
        f"agent services: {sorted(services)}",
    )
    svc = services["payments-1"]
    check(svc["Service"] == "payments", svc)
    check(svc["Tags"] == ["v2", "primary"], svc)
    check(svc["Meta"] == {"env": "prod", "region": "eu-west", "team": "core"}, svc)
    check(svc["Port"] == 8081 and svc["Address"] == "10.0.0.1", svc)

    # TTL checks start critical: nothing passes yet.
    index, entries = c.health.service("payments", passing=True)
    check(entries == [], f"nothing passes before the first heartbeat: {entries}")
    check(int(index) >= 1, f"index {index}")
    checks_list = c.health.checks("payments")[1]
    check(
        sorted(x["CheckID"] for x in checks_list) == ["service:payments-1", "service:payments-2"],
        f"check ids: {checks_list}",
    )
    check(all(x["Status"] == "critical" for x in checks_list), checks_list)

    # Pass both checks; the note becomes the output.
    check(c.agent.check.ttl_pass("service:payments-1", notes="ready") is True, "pass 1")
    check(c.agent.check.ttl_pass("service:payments-2") is True, "pass 2")
    index, entries = c.health.service("payments", passing=True, tag="primary")
    check([e["Service"]["ID"] for e in entries] == ["payments-1"], f"passing+tag: {entries}")
    entry = entries[0]
    check(entry["Service"]["Meta"]["region"] == "eu-west", entry)
    check(entry["Node"]["Datacenter"] == "dc1", entry)
    service_check = [x for x in entry["Checks"] if x["CheckID"] == "service:payments-1"][0]
    check(service_check["Status"] == "passing" and service_check["Output"] == "ready", service_check)

    # Tags match case-insensitively and repeated tags are ANDed.
    _, entries = c.health.service("payments", passing=True, tag=["PRIMARY", "v2"])
    check([e["Service"]["ID"] for e in entries] == ["payments-1"], f"two tags: {entries}")

    # A filter over Consul's health selectors.
    _, entries = c.health.service(
        "payments", filter_expr='Service.Meta.team == "core" and Service.Port == 8082'
    )
    check([e["Service"]["ID"] for e in entries] == ["payments-2"], f"filter: {entries}")

    # warn turns an instance warning, and passing excludes it.
    check(c.agent.check.ttl_warn("service:payments-2", notes="slow") is True, "warn")
    _, entries = c.health.service("payments", passing=True)
    check([e["Service"]["ID"] for e in entries] == ["payments-1"], f"warning excluded: {entries}")

    # The catalog view.
    index, rows = c.catalog.service("payments")
    check(sorted(r["ServiceID"] for r in rows) == ["payments-1", "payments-2"], rows)
    check(all(r["ServiceName"] == "payments" for r in rows), rows)
    _, rows = c.catalog.service("payments", tag="primary")
    check([r["ServiceID"] for r in rows] == ["payments-1"], f"catalog tag: {rows}")
    _, names = c.catalog.services()
    check(names == {"payments": ["primary", "v2"], "ledger": ["canary"]}, names)

    # A blocking query returns when another registration lands.
    index, entries = c.health.service("payments")
    check(len(entries) == 2, entries)
    result = {}

    def watch():
        started = time.monotonic()
        result["answer"] = c.health.service("payments", index=index, wait="30s")
        result["elapsed"] = time.monotonic() - started

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.5)
    check("answer" not in result, "the blocking query returned before any change")
    c.agent.service.register("payments", service_id="payments-3", port=8083, tags=["v3"])
    watcher.join(timeout=20)
    check(not watcher.is_alive(), "the blocking query did not return")
    new_index, entries = result["answer"]
    check(int(new_index) > int(index), f"index {index} -> {new_index}")
    check(
        sorted(e["Service"]["ID"] for e in entries) == ["payments-1", "payments-2", "payments-3"],
        entries,
    )
    check(result["elapsed"] < 10, f"took {result['elapsed']:.1f}s")

    # An unknown check is a 404, which py-consul reports as False.
    check(c.agent.check.ttl_pass("service:nope") is False, "passing an unknown check")

    # Deregister everything; a second deregistration reports False (404).
    for sid in ("payments-1", "payments-2", "payments-3", "ledger-1"):
        check(c.agent.service.deregister(sid) is True, f"deregister {sid}")
    check(c.agent.service.deregister("payments-1") is False, "second deregistration")
    check(c.agent.services() == {}, "agent services after deregistration")
    _, entries = c.health.service("payments")
    check(entries == [], entries)
    _, names = c.catalog.services()
    check(names == {}, names)

    print(f"py-consul {getattr(consul, '__version__', '?')}: {checks} passed, 0 failed")


if __name__ == "__main__":
    main()
