"""zedcup across containers: 3 Consul servers, 2 zedcup nodes (2 workers each), 3 backends
(docker-compose.yml), with real failures: containers killed, a node cut off from Consul,
the Consul leader killed. Every scenario prints its figures (requests, errors, seconds).

The tests share one stack and run in file order; each leaves it whole (every container
running, every host up) for the next.
"""

from __future__ import annotations

import json
import time

import pytest
from dockerstack import BACKENDS, CONSULS, NODES, Cluster, Load, http_get, wait_for

# nginx/docker-demo.yaml
SESSION_TTL = 24
# the TTL of zedcup's Consul sessions for it: 2 x TTL (Consul's worst case) + the lock
# delay + 2 s to take the lock over = session_ttl (lua/zedcup/session.lua)
CONSUL_TTL = (SESSION_TTL - 3) / 2


def report(name: str, **figures: object) -> None:
    text = ", ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"\n[docker] {name}: {text}")


def backend_name(body: str) -> bool:
    return body.strip() in ("web01", "web02", "dr01")


def all_up(cluster: Cluster, nodes: tuple[str, ...] = NODES) -> bool:
    for node in nodes:
        st = cluster.status(node)
        if not st or not st.get("pools"):
            return False
        if any(state != "up" for pool in st["pools"].values() for state in pool.values()):
            return False
    return True


def test_seed_readme_example_on_both_nodes(cluster: Cluster) -> None:
    """The seed README's nginx example, as written, on both nodes: /_configure on node1
    writes instance "test" (web01 10.10.10.1, web02 10.10.10.2, dr01 10.20.20.1); `/` on
    each node answers 200 and a primary's body, in turn."""
    code, body = http_get(cluster.node_url("node1", "/_configure", port=80))
    assert code == 200, body
    seen = {}
    started = time.monotonic()
    for node in NODES:
        url = cluster.node_url(node, "/", port=80)
        wait_for(f"{node} serves instance test", lambda url=url: http_get(url)[0] == 200, 10)
        seen[node] = time.monotonic() - started
        answers = [http_get(url) for _ in range(4)]
        assert all(code == 200 for code, _ in answers), answers
        lines = [body.split("\n") for _, body in answers]
        assert all(line[0] == "200" for line in lines), answers
        assert {line[1] for line in lines} == {"web01", "web02"}, answers
    report("seed example", node1_s=seen["node1"], node2_s=seen["node2"])
    cluster.zedctl("remove", "--yes", "test")


def test_backend_killed_under_load(cluster: Cluster) -> None:
    """web01's container killed while both nodes serve through balancer_by_lua
    (proxy_next_upstream) and handler:request(): no client sees an error; web01 goes
    down on both nodes, with exactly one host_down in the cluster; started again, it comes
    back through its health checks, with exactly one host_up."""
    target = "demo/primary/web01"
    downs, ups = cluster.events("host_down", target), cluster.events("host_up", target)
    urls = [cluster.node_url(n, p) for n in NODES for p in ("/proxy/", "/")]
    with Load(urls, backend_name) as load:
        time.sleep(1)
        cluster.kill("web01")
        down_s = wait_for(
            "web01 down on both nodes",
            lambda: all(cluster.host_state(n, "primary", "web01") == "down" for n in NODES),
            30,
        )
        time.sleep(2)
    killed = load.summary()
    assert not load.errors, load.errors[:10]

    cluster.start("web01")
    up_s = wait_for("web01 up again on both nodes", lambda: all_up(cluster), 30)
    wait_for("host_up logged", lambda: cluster.events("host_up", target) > ups, 5)
    report(
        "backend killed",
        load=killed,
        down_on_both_nodes_s=down_s,
        back_up_s=up_s,
        host_down=cluster.events("host_down", target) - downs,
        host_up=cluster.events("host_up", target) - ups,
    )
    assert cluster.events("host_down", target) - downs == 1
    assert cluster.events("host_up", target) - ups == 1


def set_weight(cluster: Cluster, weight: int) -> float:
    """`zedctl host weight demo primary web01 N`; the seconds from zedctl's return until
    both nodes serve with it (their /_status shows the weight of the config in use)."""
    cluster.zedctl("host", "weight", "demo", "primary", "web01", str(weight))
    written = time.monotonic()
    wait_for(
        f"web01's weight {weight} on both nodes",
        lambda: all(cluster.weight(n, "primary", "web01") == weight for n in NODES),
        30,
    )
    return time.monotonic() - written


# Figures one scenario measures and a later test judges.
FIGURES: dict[str, float] = {}


def test_node_cut_off_from_consul(cluster: Cluster) -> None:
    """The checking node disconnected from the Consul network: it keeps serving its last
    good config (0 errors); the other node takes the health checks over and does check (a
    broken backend goes down, exactly one host_down); the node reconnected rejoins: a
    change made afterwards reaches it."""
    wait_for("a checker", cluster.checker, 30)
    cut = cluster.checker()
    ttl = cluster.checker_session_ttl()
    other = next(n for n in NODES if n != cut)
    consul_net = cluster.network("consul")
    web02 = cluster.ip("web02", "backends")
    target = "demo/primary/web02"
    urls = [cluster.node_url(cut, p) for p in ("/proxy/", "/")]
    with Load(urls, backend_name, threads=2, rate=40) as load:
        cluster.docker("network", "disconnect", consul_net, cluster.container(cut))
        started = time.monotonic()
        try:
            takeover_s = wait_for(
                f"{other} takes the health checks over", lambda: cluster.checker() == other, 90, 0.2
            )
            FIGURES["cut_off_takeover_s"] = takeover_s
            # the new checker checks: web02 broken goes down on the node that sees Consul
            downs = cluster.events("host_down", target)
            http_get(f"http://{web02}/_break")
            broken_s = wait_for(
                "web02 down on the connected node",
                lambda: cluster.host_state(other, "primary", "web02") == "down",
                15,
            )
            http_get(f"http://{web02}/_fix")
            wait_for(
                "web02 up again on the connected node",
                lambda: cluster.host_state(other, "primary", "web02") == "up",
                15,
            )
            host_down = cluster.events("host_down", target) - downs
            cut_for = time.monotonic() - started
        finally:
            cluster.docker("network", "connect", consul_net, cluster.container(cut))
    served = load.summary()
    assert not load.errors, load.errors[:10]

    # rejoined: a change made now reaches the node that was cut off
    try:
        change_s = set_weight(cluster, 3)
    finally:
        set_weight(cluster, 1)
    report(
        "node cut off from Consul",
        node=cut,
        session_consul_ttl_s=ttl,
        load_on_cut_node=served,
        cut_for_s=cut_for,
        takeover_s=takeover_s,
        check_after_takeover_s=broken_s,
        host_down=host_down,
        change_after_rejoin_s=change_s,
    )
    assert host_down == 1
    # the node's session has the configured session_ttl's TTL (not the default's)
    assert ttl == CONSUL_TTL


def test_cut_off_takeover_within_session_ttl() -> None:
    """Issue 8: the other node takes over health checks within session_ttl."""
    if "cut_off_takeover_s" not in FIGURES:
        pytest.skip("test_node_cut_off_from_consul did not measure the takeover")
    assert FIGURES["cut_off_takeover_s"] <= SESSION_TTL


def test_checker_node_killed(cluster: Cluster) -> None:
    """The node holding the health-check lock killed (docker kill): the other node takes
    the checks over (time measured) while serving without errors; the killed node, started
    again, serves again."""
    wait_for("a checker", cluster.checker, 60)
    victim = cluster.checker()
    ttl = cluster.checker_session_ttl()
    other = next(n for n in NODES if n != victim)
    urls = [cluster.node_url(other, p) for p in ("/proxy/", "/")]
    with Load(urls, backend_name, threads=2, rate=40) as load:
        cluster.kill(victim)
        takeover_s = wait_for(
            f"{other} takes the health checks over", lambda: cluster.checker() == other, 90, 0.2
        )
    assert not load.errors, load.errors[:10]
    cluster.start(victim)
    back_s = wait_for(
        f"{victim} serves again",
        lambda: backend_name(http_get(cluster.node_url(victim))[1]),
        60,
    )
    report(
        "checker node killed",
        node=victim,
        session_consul_ttl_s=ttl,
        load_on_other_node=load.summary(),
        takeover_s=takeover_s,
        restarted_serving_s=back_s,
    )
    # A real Consul expires a session up to 2 x its TTL after its last renewal, then the
    # lock delay: within session_ttl (issue 8)
    assert ttl == CONSUL_TTL
    assert takeover_s <= SESSION_TTL


def test_checker_node_stopped_cleanly(cluster: Cluster) -> None:
    """The node holding the health-check lock stopped cleanly (`docker stop`: SIGQUIT,
    nginx's graceful stop): it releases the lock and the other node takes the checks over
    within 2 s (issue 9), serving without errors; started again, it serves."""
    wait_for("a checker", cluster.checker, 60)
    victim = cluster.checker()
    other = next(n for n in NODES if n != victim)
    urls = [cluster.node_url(other, p) for p in ("/proxy/", "/")]
    with Load(urls, backend_name, threads=2, rate=40) as load:
        stopping = time.monotonic()
        cluster.docker("stop", "-t", "20", cluster.container(victim), timeout=60)
        stopped_s = time.monotonic() - stopping
        takeover_s = wait_for(
            f"{other} takes the health checks over", lambda: cluster.checker() == other, 60, 0.1
        )
    assert not load.errors, load.errors[:10]
    cluster.start(victim)
    serves = lambda: backend_name(http_get(cluster.node_url(victim))[1])  # noqa: E731
    wait_for(f"{victim} serves again", serves, 60)
    report(
        "checker node stopped cleanly",
        node=victim,
        load_on_other_node=load.summary(),
        stop_took_s=stopped_s,
        takeover_after_stop_s=takeover_s,
    )
    assert takeover_s <= 2


def test_consul_leader_killed_under_load(cluster: Cluster) -> None:
    """The Consul leader's container killed while both nodes serve: 0 client errors; the
    remaining servers elect a leader; a change written afterwards reaches both nodes; the
    health-check lock has a holder and checks go on (a broken backend goes down); the
    server started again rejoins the cluster."""
    wait_for("one leader", cluster.leader, 30)
    leader = cluster.leader()
    checker = cluster.checker()
    remaining = tuple(s for s in CONSULS if s != leader)
    urls = [cluster.node_url(n, p) for n in NODES for p in ("/proxy/", "/")]
    with Load(urls, backend_name) as load:
        time.sleep(1)
        cluster.kill(leader)
        elect_s = wait_for(
            "a new leader", lambda: cluster.leader(remaining) not in (None, leader), 30, 0.2
        )
        try:
            change_s = set_weight(cluster, 3)
        finally:
            set_weight(cluster, 1)
        lock_s = wait_for("a health-check lock holder", cluster.checker, 60)
        # health checks go on: web02 broken goes down on both nodes, fixed comes back
        web02 = cluster.ip("web02", "backends")
        http_get(f"http://{web02}/_break")
        try:
            check_s = wait_for(
                "web02 down on both nodes",
                lambda: all(cluster.host_state(n, "primary", "web02") == "down" for n in NODES),
                15,
            )
        finally:
            http_get(f"http://{web02}/_fix")
        wait_for("web02 up on both nodes", lambda: all_up(cluster), 15)
    assert not load.errors, load.errors[:10]

    def peers() -> int:
        code, body = http_get(cluster.consul_url(leader) + "/v1/status/peers")
        return len(json.loads(body)) if code == 200 else 0

    cluster.start(leader)
    rejoin_s = wait_for(f"{leader} back in the cluster", lambda: peers() == 3, 60, 0.5)
    report(
        "Consul leader killed",
        leader=leader,
        load=load.summary(),
        new_leader_s=elect_s,
        change_reached_both_nodes_s=change_s,
        lock_holder_after_s=lock_s,
        checker_before_after=f"{checker}/{cluster.checker()}",
        broken_host_down_s=check_s,
        server_rejoined_s=rejoin_s,
    )


@pytest.fixture(autouse=True)
def _whole_stack(cluster: Cluster) -> None:
    """Every scenario starts on a whole stack: all running, every host up on both nodes."""
    for service in (*CONSULS, *NODES, *BACKENDS):
        if not cluster.inspect(service)["State"]["Running"]:
            cluster.start(service)
    wait_for("every host up on both nodes", lambda: all_up(cluster), 60, 0.5)
