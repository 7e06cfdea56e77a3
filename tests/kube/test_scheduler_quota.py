"""ElasticQuota on the real API server: borrowing up to max, reclaim of whole gangs through the Eviction
API (a PodDisruptionBudget holds it back until it is removed), quota status, and a broken quota tree
(children's min above the parent's) reported while nothing is admitted against it.

Nodes are kwok nodes with hgx-h100 NodeTopologies (from ``Env``); each test's pods select only its own
nodes, so the quota tree's capacity is those nodes. Waits are generous; nothing asserts on durations.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from railnet.dev.devcluster import DevCluster
from scheduler.live.objects import POD_GROUP_LABEL
from scheduler.live.quotas import IS_PARENT_LABEL, PARENT_LABEL
from tests.kube import kubeutil
from tests.kube.test_scheduler_live import WAIT, Env

EQ = "/apis/scheduling.x-k8s.io/v1alpha1"
GPU = "nvidia.com/gpu"


class QuotaEnv(Env):
    """Env plus extra namespaces (teams), PriorityClasses and quota objects, all removed afterwards."""

    def __init__(self, cluster: DevCluster, namespace: str, tmp: Path) -> None:
        super().__init__(cluster, namespace, tmp)
        self.namespaces: list[str] = []
        self.classes: list[str] = []

    def team(self, slug: str) -> str:
        name = f"{self.ns[:40]}-{slug}"
        assert self.api.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})[0] == 201
        self.namespaces.append(name)
        kubeutil.wait_for(lambda: self.api.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0]
                          == 200 or None, WAIT, f"{name}/default ServiceAccount")
        return name

    def priority_class(self, value: int) -> str:
        name = f"{self.name}-p{value}"
        body = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
                "value": value}
        assert self.api.request("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", body)[0] == 201
        self.classes.append(name)
        return name

    def quota(self, ns: str, name: str, min_gpu: int, max_gpu: int | None = None, parent: str | None = None,
              is_parent: bool = False) -> None:
        labels = {**({PARENT_LABEL: parent} if parent else {}), **({IS_PARENT_LABEL: "true"} if is_parent else {})}
        spec: dict[str, Any] = {"min": {GPU: min_gpu}}
        if max_gpu is not None:
            spec["max"] = {GPU: max_gpu}
        body = {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "ElasticQuota",
                "metadata": {"name": name, "labels": labels}, "spec": spec}
        status, answer = self.api.request("POST", f"{EQ}/namespaces/{ns}/elasticquotas", body)
        assert status == 201, answer

    def get_quota(self, ns: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.api.get(f"{EQ}/namespaces/{ns}/elasticquotas/{name}")
        return found

    def podgroup(self, ns: str, name: str, min_member: int) -> None:
        body = {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": {"name": name},
                "spec": {"minMember": min_member}}
        assert self.api.request("POST", f"{EQ}/namespaces/{ns}/podgroups", body)[0] == 201

    def team_pod(self, ns: str, name: str, gpus: int, gang: str | None = None,
                 priority_class: str | None = None, labels: dict[str, str] | None = None) -> None:
        devices = {GPU: str(gpus), "rdma/roce": str(gpus)}
        spec: dict[str, Any] = {
            "schedulerName": self.name, "nodeSelector": {"railnet.io/test": self.tag},
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi", **devices},
                                          "limits": devices}}]}
        if priority_class:
            spec["priorityClassName"] = priority_class
        body = {"apiVersion": "v1", "kind": "Pod", "spec": spec,
                "metadata": {"name": name, "labels": {**({POD_GROUP_LABEL: gang} if gang else {}), **(labels or {})}}}
        status, answer = self.api.request("POST", f"/api/v1/namespaces/{ns}/pods", body)
        assert status == 201, answer

    def pods_in(self, ns: str) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.api.get(f"/api/v1/namespaces/{ns}/pods")["items"]}

    def bound_in(self, ns: str) -> set[str]:
        return {n for n, p in self.pods_in(ns).items() if p["spec"].get("nodeName")
                and not p["metadata"].get("deletionTimestamp")}

    def events_in(self, ns: str, name: str) -> list[dict[str, Any]]:
        items = self.api.get(f"/api/v1/namespaces/{ns}/events")["items"]
        return [e for e in items if e["involvedObject"]["name"] == name]

    def wait_event_in(self, ns: str, name: str, text: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            return next((e for e in self.events_in(ns, name) if text in e["message"]), None)

        return kubeutil.wait_for(probe, WAIT, f"an event on {ns}/{name} saying {text!r}", interval=0.5)

    def close(self) -> None:
        super().close()
        for ns in self.namespaces:
            self.api.request("DELETE", f"/api/v1/namespaces/{ns}/pods?gracePeriodSeconds=0")
            self.api.request("DELETE", f"/api/v1/namespaces/{ns}")
        for name in self.classes:
            self.api.request("DELETE", f"/apis/scheduling.k8s.io/v1/priorityclasses/{name}")


@pytest.fixture
def qenv(cluster: DevCluster, namespace: str, railnet_crds: Any, tmp_path: Path, dyn: Any) -> Iterator[QuotaEnv]:
    crds = kubeutil.DEPLOY / "scheduler" / "crds"
    kubeutil.apply(dyn, kubeutil.load(sorted(crds.glob("*.yaml"))))
    world = QuotaEnv(cluster, namespace, tmp_path)
    try:
        yield world
    finally:
        world.close()


def used_gpus(quota: dict[str, Any]) -> str | None:
    used: str | None = (quota.get("status") or {}).get("used", {}).get(GPU)
    return used


def test_borrow_up_to_max_then_reclaim_whole_gangs_through_eviction(qenv: QuotaEnv) -> None:
    env = qenv
    env.add_nodes(2)  # 16 GPUs
    team_a, team_b = env.team("a"), env.team("b")
    env.quota(team_a, "team-a", min_gpu=8, max_gpu=16)
    env.quota(team_b, "team-b", min_gpu=8, max_gpu=16)
    low, high = env.priority_class(10), env.priority_class(1000)
    env.start()
    # team-b borrows team-a's idle min: two gangs of 2 x 4 GPUs, the whole cluster
    for gang, klass in (("low", low), ("high", high)):
        env.podgroup(team_b, gang, 2)
        for i in range(2):
            env.team_pod(team_b, f"{gang}-{i}", 4, gang=gang, priority_class=klass,
                         labels={"protect": "yes"} if (gang, i) == ("low", 1) else None)
    kubeutil.wait_for(lambda: env.bound_in(team_b) == {"low-0", "low-1", "high-0", "high-1"} or None, WAIT,
                      "team-b's two gangs bound (borrowing)")
    kubeutil.wait_for(lambda: used_gpus(env.get_quota(team_b, "team-b")) == "16" or None, WAIT, "status.used 16")
    # at max: one more GPU for team-b waits with the reason
    env.team_pod(team_b, "extra", 1)
    env.wait_event_in(team_b, "extra", "quota team-b at max nvidia.com/gpu 16 (used 16, asks 1)")
    # a PDB on one member of the low gang makes the API server refuse that eviction; the gang is tried
    # with dry runs first, so its other member is not evicted either (no half gang)
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "keep-low"},
           "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"protect": "yes"}}}}
    assert env.api.request("POST", f"/apis/policy/v1/namespaces/{team_b}/poddisruptionbudgets", pdb)[0] == 201
    # team-a's own demand returns: 2 x 4 GPUs, within its min
    env.podgroup(team_a, "want", 2)
    for i in range(2):
        env.team_pod(team_a, f"want-{i}", 4, gang="want")
    blocked = env.wait_event_in(team_b, "low-0", "reclaims")
    assert blocked["reason"] == "EvictionBlocked" and "refused for low-1" in blocked["message"], blocked
    assert env.bound_in(team_b) >= {"low-0", "low-1", "high-0", "high-1"} and not env.bound_in(team_a)
    env.wait_event_in(team_a, "want-0", "quota team-a: reclaiming from borrowers")
    # the budget goes: the lowest-priority gang is evicted whole, the high one stays, team-a gets its min
    assert env.api.request("DELETE", f"/apis/policy/v1/namespaces/{team_b}/poddisruptionbudgets/keep-low")[0] == 200
    kubeutil.wait_for(lambda: env.bound_in(team_a) == {"want-0", "want-1"} or None, WAIT, "team-a's gang bound")
    assert env.bound_in(team_b) == {"high-0", "high-1"}
    assert not {"low-0", "low-1"} & set(env.pods_in(team_b))  # evicted (kwok deletes them)
    preempted = [e for e in env.events_in(team_b, "low-1") if e["reason"] == "Preempted"]
    assert preempted and f"what {team_b}/low borrowed" in preempted[0]["message"]
    # team-b's extra pod does not take what was reclaimed: team-b is at its share now
    env.wait_event_in(team_b, "extra", "quota team-b at its share of nvidia.com/gpu 8")
    assert "extra" not in env.bound_in(team_b)
    kubeutil.wait_for(lambda: (used_gpus(env.get_quota(team_a, "team-a")),
                               used_gpus(env.get_quota(team_b, "team-b"))) == ("8", "8") or None, WAIT,
                      "status.used 8 and 8")
    assert env.get_quota(team_b, "team-b")["status"]["runtime"][GPU] == "8"
    # the PodGroup's status follows its members (kwok runs bound pods)
    def want_status() -> dict[str, Any] | None:
        status = env.api.get(f"{EQ}/namespaces/{team_a}/podgroups/want").get("status") or {}
        return status if status.get("phase") == "Running" else None

    status = kubeutil.wait_for(want_status, WAIT, "PodGroup want Running")
    assert (status["scheduled"], status["running"], status["failed"]) == (2, 2, 0) and status["scheduleStartTime"]


def test_children_min_above_parent_is_reported_and_nothing_admitted(qenv: QuotaEnv) -> None:
    env = qenv
    env.add_nodes(1)
    kid_1, kid_2, other = env.team("k1"), env.team("k2"), env.team("ok")
    org = f"org-{uuid.uuid4().hex[:5]}"
    env.quota(env.ns, org, min_gpu=8, is_parent=True)
    env.quota(kid_1, f"{org}-1", min_gpu=6, parent=org)
    env.quota(kid_2, f"{org}-2", min_gpu=6, parent=org)
    env.quota(other, f"{org}-ok", min_gpu=2, max_gpu=4)
    env.start()
    env.team_pod(kid_1, "blocked", 1)
    env.team_pod(other, "fine", 1)
    env.pod("free")  # env.ns holds only the parent quota: its pods are not constrained
    env.wait_event_in(kid_1, "blocked", f"quota {org}-1 is invalid: parent quota {org} is invalid")
    event = env.wait_event_in(env.ns, org, "children's min for nvidia.com/gpu sum to 12, above its min (8)")
    assert event["reason"] == "InvalidQuota" and event["involvedObject"]["kind"] == "ElasticQuota"

    def condition() -> dict[str, Any] | None:
        conds = (env.get_quota(env.ns, org).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "Valid" and c["status"] == "False"), None)

    assert "sum to 12" in kubeutil.wait_for(condition, WAIT, "Valid=False on the parent quota")["message"]
    kubeutil.wait_for(lambda: env.bound_in(other) == {"fine"} or None, WAIT, "pod under a valid quota bound")
    kubeutil.wait_for(lambda: env.bound().get("free"), WAIT, "pod without a quota bound")
    assert not env.bound_in(kid_1)
    # fixing the tree admits the waiting pod
    fixed = env.get_quota(kid_2, f"{org}-2")
    fixed["spec"]["min"][GPU] = 2
    status, answer = env.api.request("PUT", f"{EQ}/namespaces/{kid_2}/elasticquotas/{org}-2", fixed)
    assert status == 200, answer
    kubeutil.wait_for(lambda: env.bound_in(kid_1) == {"blocked"} or None, WAIT, "pod bound after the fix")
