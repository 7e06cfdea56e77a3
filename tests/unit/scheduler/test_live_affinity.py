"""Required inter-pod affinity / anti-affinity (``scheduler.live.interpod``) and the cycle that uses it."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.live import gangs, interpod, objects
from scheduler.live.cache import SchedulerCache
from scheduler.live.loop import Scheduler
from scheduler.live.metrics import Metrics
from tests.unit.scheduler.test_live_objects import node, pod

HOST = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"


def term(key: str = HOST, **match: str) -> dict[str, Any]:
    return {"labelSelector": {"matchLabels": match}, "topologyKey": key}


def with_terms(name: str, labels: dict[str, str], affinity: list[dict[str, Any]] | None = None,
               anti: list[dict[str, Any]] | None = None, namespace: str = "ns", **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if affinity:
        spec["podAffinity"] = {interpod.REQUIRED: affinity}
    if anti:
        spec["podAntiAffinity"] = {interpod.REQUIRED: anti}
    body = pod(name, metadata={"labels": labels}, **kw)
    if spec:
        body["spec"]["affinity"] = spec
    body["metadata"]["namespace"] = namespace
    return body


def zoned(name: str, zone: str | None, gpus: int = 8) -> dict[str, Any]:
    labels = {HOST: name, **({ZONE: zone} if zone else {})}
    return node(name, gpus=gpus, nics=gpus, labels=labels)


def sched(nodes: list[dict[str, Any]], *pods: dict[str, Any], namespaces: dict[str, dict[str, str]] | None = None,
          podgroups: dict[str, int] | None = None) -> Scheduler:
    cache = SchedulerCache()
    cache.replace_nodes(nodes)
    cache.replace_namespaces([{"metadata": {"name": n, "labels": labels}} for n, labels in (namespaces or {}).items()])
    for name, minimum in (podgroups or {}).items():
        cache.on_podgroup("ADDED", {"metadata": {"name": name, "namespace": "ns"}, "spec": {"minMember": minimum}})
    cache.rebuild()
    for body in pods:
        cache.on_pod("ADDED", body)
    return Scheduler(None, cache, Metrics(), lambda: True, dry_run=True)  # type: ignore[arg-type]


def incoming(body: dict[str, Any]) -> interpod.Incoming:
    meta = body["metadata"]
    return interpod.Incoming(meta["namespace"], meta.get("labels") or {}, interpod.affinity_of(body))


def placed(body: dict[str, Any], node_index: int) -> interpod.Placed:
    meta = body["metadata"]
    return interpod.Placed(meta["namespace"], meta.get("labels") or {}, node_index, interpod.affinity_of(body))


NODES = [{HOST: "a", ZONE: "z1"}, {HOST: "b", ZONE: "z1"}, {HOST: "c", ZONE: "z2"}, {HOST: "d"}]


# -- the pure filter -------------------------------------------------------------------------------

def test_anti_affinity_rules_out_the_domains_of_matching_pods_only() -> None:
    web = with_terms("w2", {"app": "web"}, anti=[term(ZONE, app="web")])
    existing = [placed(with_terms("w1", {"app": "web"}), 0), placed(with_terms("db", {"app": "db"}), 2)]
    out, why = interpod.excluded(incoming(web), existing, NODES, {})
    assert out == {0, 1} and why == {interpod.WHY_ANTI: 2}  # zone z1; node d has no zone: allowed


def test_existing_pods_anti_affinity_is_symmetric() -> None:
    guard = with_terms("guard", {"app": "guard"}, anti=[term(HOST, app="web")])
    out, why = interpod.excluded(incoming(with_terms("w", {"app": "web"})), [placed(guard, 1)], NODES, {})
    assert out == {1} and why == {interpod.WHY_EXISTING: 1}
    # another namespace: the guard's term defaults to its own namespace
    assert interpod.excluded(incoming(with_terms("w", {"app": "web"}, namespace="other")), [placed(guard, 1)],
                             NODES, {})[0] == set()


def test_affinity_needs_a_matching_pod_in_the_same_domain_and_the_key_on_the_node() -> None:
    cache_pod = with_terms("cache", {"app": "cache"})
    web = with_terms("web", {"app": "web"}, affinity=[term(ZONE, app="cache")])
    out, why = interpod.excluded(incoming(web), [placed(cache_pod, 2)], NODES, {})
    assert out == {0, 1, 3} and why == {interpod.WHY_AFFINITY: 3}
    # nothing matches and the pod does not match its own term: nowhere
    assert interpod.excluded(incoming(web), [], NODES, {})[0] == {0, 1, 2, 3}


def test_the_first_pod_of_a_self_affine_group_may_go_to_any_node_with_the_key() -> None:
    first = with_terms("w1", {"app": "web"}, affinity=[term(ZONE, app="web")])
    assert interpod.excluded(incoming(first), [], NODES, {})[0] == {3}  # d has no zone
    second = with_terms("w2", {"app": "web"}, affinity=[term(ZONE, app="web")])
    assert interpod.excluded(incoming(second), [placed(first, 2)], NODES, {})[0] == {0, 1, 3}


def test_affinity_counts_only_pods_that_match_all_terms() -> None:
    both = [term(ZONE, app="cache"), term(HOST, tier="hot")]
    web = with_terms("web", {"app": "web"}, affinity=both)
    only_app = with_terms("c1", {"app": "cache"})
    assert interpod.excluded(incoming(web), [placed(only_app, 0)], NODES, {})[0] == {0, 1, 2, 3}
    hot = with_terms("c2", {"app": "cache", "tier": "hot"})
    assert interpod.excluded(incoming(web), [placed(hot, 0)], NODES, {})[0] == {1, 2, 3}


def test_namespaces_and_namespace_selectors() -> None:
    other = with_terms("c", {"app": "cache"}, namespace="shared")
    listed = with_terms("w", {"app": "web"}, affinity=[{**term(ZONE, app="cache"), "namespaces": ["shared"]}])
    assert interpod.excluded(incoming(listed), [placed(other, 2)], NODES, {})[0] == {0, 1, 3}
    by_label = with_terms("w", {"app": "web"}, affinity=[
        {**term(ZONE, app="cache"), "namespaceSelector": {"matchLabels": {"team": "infra"}}}])
    assert interpod.excluded(incoming(by_label), [placed(other, 2)], NODES, {"shared": {"team": "infra"}})[0] \
        == {0, 1, 3}
    assert interpod.excluded(incoming(by_label), [placed(other, 2)], NODES, {"shared": {}})[0] == {0, 1, 2, 3}
    everywhere = with_terms("w", {"app": "web"}, affinity=[{**term(ZONE, app="cache"), "namespaceSelector": {}}])
    assert interpod.excluded(incoming(everywhere), [placed(other, 2)], NODES, {})[0] == {0, 1, 3}


def test_selectors_nil_matches_nothing_empty_everything_and_expressions() -> None:
    nil = interpod.selector_of(None)
    assert not nil.matches({}) and interpod.selector_of({}).matches({"x": "y"})
    sel = interpod.selector_of({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]},
                                                     {"key": "b", "operator": "DoesNotExist"},
                                                     {"key": "c", "operator": "NotIn", "values": ["x"]}]})
    assert sel.matches({"a": "1"}) and sel.matches({"a": "2", "c": "y"})
    assert not sel.matches({"a": "3"}) and not sel.matches({"a": "1", "b": ""}) and not sel.matches({"a": "1", "c": "x"})
    assert interpod.affinity_of(pod("plain")) is None


labels_st = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), max_size=2)
node_st = st.fixed_dictionaries({HOST: st.sampled_from("abcdef")}, optional={ZONE: st.sampled_from(["z1", "z2"])})


@settings(max_examples=150, deadline=None)
@given(nodes=st.lists(node_st, min_size=1, max_size=6), pods=st.lists(
    st.tuples(labels_st, st.booleans(), st.sampled_from([HOST, ZONE]), labels_st, st.integers(0, 5)), max_size=6),
    new=st.tuples(labels_st, st.sampled_from([HOST, ZONE]), labels_st, st.booleans()))
def test_filter_matches_the_definition(nodes: list[dict[str, str]], pods: list[Any], new: Any) -> None:
    """Brute force, pair by pair, against kube-scheduler's rules (anti-affinity both ways, affinity)."""
    existing = []
    for i, (lab, has_anti, key, match, where) in enumerate(pods):
        anti = [{"labelSelector": {"matchLabels": match}, "topologyKey": key}] if has_anti else None
        existing.append(placed(with_terms(f"e{i}", lab, anti=anti), where % len(nodes)))
    lab, key, match, is_affinity = new
    t = [{"labelSelector": {"matchLabels": match}, "topologyKey": key}]
    body = with_terms("new", lab, affinity=t if is_affinity else None, anti=None if is_affinity else t)
    out, _ = interpod.excluded(incoming(body), existing, nodes, {})

    def sel(m: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in m.items())

    for index, here in enumerate(nodes):
        def same(e: interpod.Placed, k: str, here: dict[str, str] = here) -> bool:
            return k in here and nodes[e.node].get(k) == here[k]
        bad = any(e.terms is not None and any(same(e, tt.key) and tt.selector.matches(lab) for tt in e.terms.anti)
                  for e in existing)
        if is_affinity:
            # kube counts matching pods per (key, value): one on a node without the key counts nowhere
            matching = [e for e in existing if sel(match, dict(e.labels)) and key in nodes[e.node]]
            if key not in here or not any(same(e, key) for e in matching) and (matching or not sel(match, lab)):
                bad = True
        else:
            bad = bad or any(same(e, key) and sel(match, dict(e.labels)) for e in existing)
        assert (index in out) == bad, (index, here)


# -- the cycle --------------------------------------------------------------------------------------

def test_replicas_with_hostname_anti_affinity_spread_and_the_extra_one_waits() -> None:
    replicas = [with_terms(f"r{i}", {"app": "r"}, anti=[term(HOST, app="r")]) for i in range(4)]
    s = sched([zoned(n, "z1") for n in "abc"], *replicas)
    decisions = s.cycle()
    assert len(decisions) == 3 and len({d.node for d in decisions}) == 3  # one per host, in one cycle
    assert s.cycle() == []
    assert s.cache.pods["ns/r3"].key not in s.cache.cluster.allocations


def test_affinity_follows_a_labelled_pod_into_its_zone() -> None:
    s = sched([zoned("a", "z1"), zoned("b", "z2"), zoned("c", "z2")],
              pod("db", node="b", metadata={"labels": {"app": "db"}}),
              *(with_terms(f"w{i}", {"app": "w"}, affinity=[term(ZONE, app="db")], gpus=4) for i in range(3)))
    decisions = s.cycle()
    assert {d.node for d in decisions} <= {"b", "c"} and len(decisions) == 3


def test_unsatisfiable_affinity_says_why_and_holds_nothing() -> None:
    s = sched([zoned("a", "z1"), zoned("b", "z2")], with_terms("lonely", {"app": "w"}, affinity=[term(ZONE, app="db")]))
    messages: list[str] = []
    s.events.pod = lambda pod, reason, message, warning=True: messages.append(message)  # type: ignore[method-assign]
    s.dry_run = False
    s.binder.submit = lambda decision: None  # type: ignore[method-assign]
    assert s.cycle() == []
    assert not s.cache.cluster.allocations
    assert messages == ["no usable node (2 nodes; excluded: 2 by pod affinity)"]


def test_gang_members_see_each_other_anti_affinity() -> None:
    label = {objects.POD_GROUP_LABEL: "g", "app": "g"}
    members = [with_terms(f"m{i}", label, anti=[term(HOST, app="g")], gpus=1) for i in range(3)]
    s = sched([zoned(n, "z1") for n in "abc"], *members, podgroups={"g": 3})
    decisions = s.cycle()
    assert len(decisions) == 3 and len({d.node for d in decisions}) == 3  # the core alone would pack one node
    for d in decisions:
        assert json.loads(d.annotation)["group"] == "ns/g"


def test_gang_that_cannot_spread_is_all_or_nothing_with_a_reason() -> None:
    label = {objects.POD_GROUP_LABEL: "g", "app": "g"}
    members = [with_terms(f"m{i}", label, anti=[term(HOST, app="g")], gpus=1) for i in range(3)]
    s = sched([zoned(n, "z1") for n in "ab"], *members, podgroups={"g": 3})
    messages: list[str] = []
    s.events.pod = lambda pod, reason, message, warning=True: messages.append(message)  # type: ignore[method-assign]
    s.events.on_object = lambda *a, **k: None  # type: ignore[method-assign]
    s.dry_run = False
    assert s.cycle() == [] and not s.cache.cluster.allocations
    assert messages[0].startswith("gang ns/g: 2 of 3 members fit; member ns/m2: no usable node")
    assert "excluded: 2 by anti-affinity of placed pods" in messages[0]  # m0 and m1 keep m2 off both


def test_gang_members_with_affinity_to_each_other_share_a_zone() -> None:
    label = {objects.POD_GROUP_LABEL: "g", "app": "g"}
    members = [with_terms(f"m{i}", label, affinity=[term(ZONE, app="g")], gpus=8) for i in range(2)]
    # one free node per zone in z1 / z2 / z3, two in z4: only z4 holds both members
    s = sched([zoned("a", "z1"), zoned("b", "z2"), zoned("c", "z4"), zoned("d", "z4")], *members, podgroups={"g": 2})
    decisions = s.cycle()
    assert sorted(d.node for d in decisions) == ["c", "d"]  # z4, whichever zone the first pass tried


def test_pods_without_terms_cost_nothing_extra() -> None:
    s = sched([zoned("a", "z1")], pod("p"))
    [unit] = gangs.collect(s.cache.pending(0.0), s.cache.pods, s.cache.podgroups, set())
    assert s._affinity(unit) is None  # no term anywhere: the filter is not even built


def test_a_pod_without_terms_respects_anti_affinity_placed_earlier_in_the_same_cycle() -> None:
    guard = with_terms("guard", {"app": "guard"}, anti=[term(HOST, app="web")])
    guard["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z"  # first in the queue
    s = sched([zoned("a", "z1"), zoned("b", "z1")], guard, *(pod(f"web{i}", metadata={"labels": {"app": "web"}})
                                                            for i in range(3)))
    decisions = {d.pod.name: d.node for d in s.cycle()}
    assert len(decisions) == 4
    assert all(decisions[f"web{i}"] != decisions["guard"] for i in range(3))
