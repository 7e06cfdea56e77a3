"""Host ports in `railnet scheduler` (scheduler/live/hostports.py): kube-scheduler's NodePorts rules,
the node agent's host listeners, and gang members that share a port, on a cache fed literal JSON."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from netmanager.host_listeners import compact
from scheduler.gang import Gang
from scheduler.live import hostports, objects
from scheduler.live.hostports import HostPort
from scheduler.live.loop import Scheduler
from scheduler.live.metrics import Metrics
from scheduler.view import ClusterView
from tests.unit.scheduler.test_live_objects import cache_with, node, pod


def with_ports(name: str, *ports: dict[str, Any], gpus: int = 1, on: str | None = None,
               metadata: dict[str, Any] | None = None, host_network: bool = False) -> dict[str, Any]:
    body = pod(name, gpus=gpus, nics=gpus, node=on, metadata=metadata or {})
    body["spec"]["containers"][0]["ports"] = list(ports)
    if host_network:
        body["spec"]["hostNetwork"] = True
    return body


def listening(name: str, ports: str) -> dict[str, Any]:
    body = node(name)
    body["metadata"]["annotations"] = {hostports.HOST_LISTENERS: ports}
    return body


def run(nodes: list[dict[str, Any]], *pods: dict[str, Any]) -> Scheduler:
    cache = cache_with(nodes)
    for body in pods:
        cache.on_pod("ADDED", body)
    return Scheduler(None, cache, Metrics(), lambda: True, dry_run=True)  # type: ignore[arg-type]


# -- parsing and the conflict rule -----------------------------------------------------------------------


def test_pod_ports_follow_kube_schedulers_get_host_ports() -> None:
    body = with_ports("p", {"containerPort": 80}, {"containerPort": 8080, "hostPort": 8080},
                      {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"})
    body["spec"]["initContainers"] = [
        {"name": "sidecar", "restartPolicy": "Always", "ports": [{"containerPort": 9000, "hostPort": 9000}]},
        {"name": "init", "ports": [{"containerPort": 9001, "hostPort": 9001}]},  # not running: not held
    ]
    assert objects.constraints_of(body).host_ports == (
        HostPort(53, "UDP", "10.0.0.1"), HostPort(8080), HostPort(9000))
    assert objects.constraints_of(pod()).host_ports == ()
    # the port set is not part of the signature: node filters stay cached per shape
    assert objects.constraints_of(body).signature == objects.constraints_of(pod()).signature


def reference_conflict(a: HostPort, b: HostPort) -> bool:
    """kube-scheduler's HostPortInfo: a wildcard address holds the port on every address."""
    if (a.port, a.protocol) != (b.port, b.protocol):
        return False
    return a.ip == b.ip or "0.0.0.0" in (a.ip, b.ip)


ports = st.builds(HostPort, st.integers(1, 4), st.sampled_from(["TCP", "UDP", "SCTP"]),
                  st.sampled_from(["0.0.0.0", "10.0.0.1", "10.0.0.2"]))


@given(ports, ports)
def test_conflict_is_symmetric_and_kube_schedulers_rule(a: HostPort, b: HostPort) -> None:
    assert a.conflicts(b) == b.conflicts(a) == reference_conflict(a, b)
    assert a.conflicts(a)


@given(st.sets(st.integers(1, 65535), max_size=40), st.integers(1, 65535))
def test_listeners_round_trip_through_the_agents_format(held: set[int], port: int) -> None:
    body = listening("n", compact(held))
    assert hostports.listeners_of(body) == held
    blocked, reasons = hostports.excluded([HostPort(port)], {}, {0: frozenset(held)})
    assert (blocked == [0]) == (port in held)
    if port in held:
        assert reasons == {f"host port {port} taken by a host process": 1}
    # UDP is not what the agent reports (it reads /proc/net/tcp*): never blocked by a listener
    assert hostports.excluded([HostPort(port, "UDP")], {}, {0: frozenset(held)})[0] == []


def test_an_unreadable_listeners_annotation_blocks_nothing() -> None:
    assert hostports.listeners_of(listening("n", "22,oops")) == frozenset()
    assert hostports.listeners_of(node("n")) == frozenset()


@given(st.lists(st.tuples(st.integers(0, 3), ports), max_size=12), st.lists(ports, min_size=1, max_size=3))
def test_excluded_is_exactly_the_nodes_with_a_conflict(held: list[tuple[int, HostPort]],
                                                      wanted: list[HostPort]) -> None:
    by_node: dict[int, list[HostPort]] = {}
    for index, port in held:
        by_node.setdefault(index, []).append(port)
    blocked, reasons = hostports.excluded(wanted, by_node, {})
    expected = [i for i in sorted(by_node) if any(reference_conflict(w, h) for w in wanted for h in by_node[i])]
    assert blocked == expected
    assert sum(reasons.values()) == len(expected)


# -- the scheduling cycle ----------------------------------------------------------------------------------


def test_a_pod_avoids_nodes_where_its_host_port_is_held() -> None:
    holder = with_ports("holder", {"containerPort": 8080, "hostPort": 8080}, on="a")
    holder["spec"]["schedulerName"] = "default-scheduler"  # bound by someone else: its port counts all the same
    other_ip = with_ports("ip", {"containerPort": 8080, "hostPort": 8080, "hostIP": "10.0.0.1"}, on="b")
    udp = with_ports("udp", {"containerPort": 8080, "hostPort": 8080, "protocol": "UDP"}, on="c")
    sched = run([node("a"), node("b"), node("c")], holder, other_ip, udp,
                with_ports("new", {"containerPort": 8080, "hostPort": 8080}))
    [decision] = sched.cycle()
    assert decision.node == "c"  # a: wildcard held; b: 10.0.0.1 conflicts with a wildcard; c: only UDP


def test_a_pod_on_another_address_shares_the_node() -> None:
    held = with_ports("held", {"containerPort": 8080, "hostPort": 8080, "hostIP": "10.0.0.1"}, on="a")
    sched = run([node("a")], held, with_ports("new", {"containerPort": 8080, "hostPort": 8080, "hostIP": "10.0.0.2"}))
    assert [d.node for d in sched.cycle()] == ["a"]


def test_assumed_pods_hold_their_ports_for_the_next_decision() -> None:
    sched = run([node("a"), node("b")], *(with_ports(f"p{i}", {"containerPort": 7000, "hostPort": 7000})
                                          for i in range(3)))
    decisions = sched.cycle()
    assert sorted(d.node for d in decisions) == ["a", "b"]  # the third waits: port 7000 is taken on both
    assert sched.cycle() == []
    # the reason names the port
    cache = sched.cache
    waiting = next(p for k, p in cache.pods.items() if k not in cache.cluster.allocations)
    blocked, reasons = cache.host_ports_taken(waiting.constraints)
    assert sorted(blocked) == [0, 1] and reasons == {"host port 7000 taken": 2}


def test_a_released_port_is_free_again() -> None:
    sched = run([node("a")], with_ports("old", {"containerPort": 7000, "hostPort": 7000}, on="a"),
                with_ports("new", {"containerPort": 7000, "hostPort": 7000}))
    assert sched.cycle() == []
    sched.cache.on_pod("DELETED", with_ports("old", {"containerPort": 7000, "hostPort": 7000}, on="a"))
    assert [d.node for d in sched.cycle()] == ["a"]


def test_host_listeners_rule_nodes_out_and_a_new_annotation_takes_effect() -> None:
    sched = run([listening("a", "22,20000-20010"), node("b")],
                with_ports("p", {"containerPort": 20005, "hostPort": 20005}, host_network=True))
    cache = sched.cache
    cache.on_node("MODIFIED", listening("b", "20005"))
    assert sched.cycle() == []
    blocked, reasons = cache.host_ports_taken(cache.pods["ns/p"].constraints)
    assert reasons == {"host port 20005 taken by a host process": 2}
    cache.on_node("MODIFIED", listening("b", "22"))  # the daemon on b went away
    assert [d.node for d in sched.cycle()] == ["b"]


def test_static_filters_and_ports_are_reported_apart() -> None:
    tainted = listening("a", "7000")
    tainted["spec"]["taints"] = [{"key": "k", "effect": "NoSchedule"}]
    sched = run([tainted, listening("b", "7000"), node("c", gpus=1)],
                with_ports("p", {"containerPort": 7000, "hostPort": 7000}, gpus=2))
    constraints = sched.cache.pods["ns/p"].constraints
    assert sched.cache.excluded(constraints) == ([0], {"taint": 1})  # cached per signature: no ports in it
    assert sched.cache.host_ports_taken(constraints) == ([0, 1], {"host port 7000 taken by a host process": 2})
    assert sched.cycle() == []
    # the message names the port (a node both tainted and holding the port counts under the port)
    view = ClusterView(sched.cache.cluster)
    view.block(0)
    pod = sched.cache.pods["ns/p"]
    plan, why = hostports.plan_gang(view, Gang("ns/p", (pod.spec,)), [pod], sched.cache.host_ports_taken)
    assert plan is None and why == ("no node has 2 nvidia.com/gpu (the largest has 1); excluded: 2 by host port "
                                    "7000 taken by a host process")
    # a node that only its other filters rule out is counted as such
    sched.cache.on_node("MODIFIED", {**tainted, "metadata": {"name": "a", "labels": {}}})
    sched.cache.rebuild()
    view = ClusterView(sched.cache.cluster)
    view.block(0)
    plan, why = hostports.plan_gang(view, Gang("ns/p", (pod.spec,)), [pod], sched.cache.host_ports_taken)
    assert plan is None and why == ("no node has 2 nvidia.com/gpu (the largest has 1); excluded: 1 by host port "
                                    "7000 taken by a host process, 1 by the pod's other filters")


def test_a_pod_that_does_not_fit_anyway_gets_the_callers_message() -> None:
    sched = run([listening("a", "7000"), node("b")], with_ports("p", {"containerPort": 7000, "hostPort": 7000}, gpus=9))
    pod = sched.cache.pods["ns/p"]
    plan, why = hostports.plan_gang(ClusterView(sched.cache.cluster), Gang("ns/p", (pod.spec,)), [pod],
                                    sched.cache.host_ports_taken)
    assert plan is None and why is None


def gang(name: str, count: int, port: int | None, gpus: int = 1) -> list[dict[str, Any]]:
    label = {"labels": {objects.POD_GROUP_LABEL: name}}
    spec = [{"containerPort": port, "hostPort": port}] if port else []
    return [with_ports(f"{name}-{i}", *spec, gpus=gpus, metadata=label) for i in range(count)]


def with_group(sched: Scheduler, name: str, members: int) -> Scheduler:
    sched.cache.on_podgroup("ADDED", {"metadata": {"name": name, "namespace": "ns"}, "spec": {"minMember": members}})
    return sched


def test_gang_members_with_one_port_never_share_a_node() -> None:
    sched = with_group(run([node("a"), node("b"), node("c")], *gang("g", 3, 2222)), "g", 3)
    decisions = sched.cycle()
    assert len(decisions) == 3 and len({d.node for d in decisions}) == 3
    # without the port the core packs them onto one node (what the port must prevent)
    packed = with_group(run([node("a"), node("b"), node("c")], *gang("h", 3, None)), "h", 3)
    assert len({d.node for d in packed.cycle()}) == 1


def test_gang_that_needs_more_nodes_than_the_port_allows_waits_and_says_why() -> None:
    sched = with_group(run([node("a"), node("b")], *gang("g", 3, 2222)), "g", 3)
    assert sched.cycle() == []
    assert not sched.cache.cluster.allocations  # all or nothing
    members = sorted(sched.cache.pods.values(), key=lambda p: p.key)
    core = Gang("ns/g", tuple(p.spec for p in members), 3)
    plan, why = hostports.plan_gang(ClusterView(sched.cache.cluster), core, members)
    assert plan is None and why is not None
    assert why.startswith("gang ns/g: 2 of 3 members fit; member ns/g-2: no usable node (2 nodes; excluded: "
                          "2 by host port 2222 taken by another member of the gang)")


def test_gang_members_with_different_ports_each_avoid_only_their_own() -> None:
    # port 7001 is held on a, 7002 on b: member 1 must go to b, member 2 to a (blocking the union of
    # the members' nodes for the whole gang would leave no node at all)
    held = [with_ports("h1", {"containerPort": 7001, "hostPort": 7001}, on="a"),
            with_ports("h2", {"containerPort": 7002, "hostPort": 7002}, on="b")]
    label = {"labels": {objects.POD_GROUP_LABEL: "g"}}
    members = [with_ports(f"g-{i}", {"containerPort": 7000 + i, "hostPort": 7000 + i}, metadata=label) for i in (1, 2)]
    sched = with_group(run([node("a"), node("b")], *held, *members), "g", 2)
    assert {d.pod.name: d.node for d in sched.cycle()} == {"g-1": "b", "g-2": "a"}


def test_gang_with_distinct_ports_packs_as_before() -> None:
    label = {"labels": {objects.POD_GROUP_LABEL: "g"}}
    members = [with_ports(f"g-{i}", {"containerPort": 3000 + i, "hostPort": 3000 + i}, metadata=label)
               for i in range(3)]
    sched = with_group(run([node("a"), node("b")], *members), "g", 3)
    assert len({d.node for d in sched.cycle()}) == 1
