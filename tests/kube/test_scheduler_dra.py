"""railnet's scheduler allocating DRA ResourceClaims (GPU + RDMA NIC jointly), against the real API
server, kube-controller-manager (which makes claims from templates) and kube-scheduler.

kwok nodes carry the hgx-h100 fixture topology, its NodeTopology, and fixture slices
(``railnet.dev.fixture_gpu``: GPUs of ``gpu.fixture.railnet.io`` and railnet's NICs, same bus IDs).
In that server every GPU has exactly one NIC under its PCIe switch (GPU i with NIC i), and NICs
0-3 / 4-7 share NUMA node 0 / 1 with GPUs 0-3 / 4-7. Each test uses its own nodes and scheduler
name (``Env`` of test_scheduler_live); waits are generous and nothing asserts on durations.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from railnet.dev import fixture_gpu
from railnet.dev.devcluster import DevCluster
from scheduler.dra.api import Result, parse_claim
from scheduler.live.claims import FINALIZER, ClaimWriteError, ClaimWriter, Write
from scheduler.live.kubeapi import KubeApi, endpoint_from_config
from scheduler.live.objects import POD_GROUP_LABEL
from tests.kube import kubeutil
from tests.kube.test_scheduler_live import WAIT, Env

GPU = fixture_gpu.DRIVER
NIC = "rdma.railnet.io"
RES = "/apis/resource.k8s.io/v1"
TOPO = fixture_gpu.topology("x")
GPU_BUS = {g.pci_address: g for g in TOPO.gpus}
NIC_BUS = {n.pci_address: n for n in TOPO.nics}


class DraEnv(Env):
    def add_dra_nodes(self, count: int) -> list[str]:
        names = self.add_nodes(count)
        fixture_gpu.publish(self.api, names)
        return names

    def template(self, name: str, requests: list[dict[str, Any]], constraints: list[dict[str, Any]] | None = None) -> None:
        body = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": name},
                "spec": {"spec": {"devices": {"requests": requests, "constraints": constraints or []}}}}
        status, answer = self.api.request("POST", f"{RES}/namespaces/{self.ns}/resourceclaimtemplates", body)
        assert status == 201, answer

    def claim_pod(self, name: str, template: str, scheduler: str | None = None, labels: dict[str, str] | None = None,
                  cpu: str = "100m") -> dict[str, Any]:
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
                "spec": {"schedulerName": scheduler or self.name, "nodeSelector": {"railnet.io/test": self.tag},
                         "resourceClaims": [{"name": "devs", "resourceClaimTemplateName": template}],
                         "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                         "resources": {"requests": {"cpu": cpu, "memory": "64Mi"},
                                                       "claims": [{"name": "devs"}]}}]}}
        status, answer = self.api.request("POST", f"/api/v1/namespaces/{self.ns}/pods", body)
        assert status == 201, answer
        return answer

    def claim_of(self, pod: str) -> dict[str, Any]:
        obj = self.api.get(f"/api/v1/namespaces/{self.ns}/pods/{pod}")
        name = obj["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
        return self.api.get(f"{RES}/namespaces/{self.ns}/resourceclaims/{name}")

    def claims(self) -> list[dict[str, Any]]:
        return self.api.get(f"{RES}/namespaces/{self.ns}/resourceclaims")["items"]

    def close(self) -> None:
        super().close()
        # claims go with their pods (the controller manager); the slices are ours to remove
        fixture_gpu.delete(self.api, self.nodes)


@pytest.fixture
def env(cluster: DevCluster, namespace: str, railnet_crds: Any, tmp_path: Path, dyn: Any) -> Iterator[DraEnv]:
    kubeutil.apply(dyn, kubeutil.load(sorted((kubeutil.DEPLOY / "scheduler" / "crds").glob("*.yaml"))))
    world = DraEnv(cluster, namespace, tmp_path)
    fixture_gpu.install_device_classes(world.api)
    try:
        yield world
    finally:
        world.close()


def gpu(count: int = 1, cel: str | None = None) -> dict[str, Any]:
    return {"name": "gpu", "exactly": {"deviceClassName": GPU, "count": count,
                                       "selectors": [{"cel": {"expression": cel}}] if cel else []}}


def nic(cel: str | None = None, bandwidth: str | None = None, name: str = "nic", cls: str = NIC) -> dict[str, Any]:
    exact: dict[str, Any] = {"deviceClassName": cls, "selectors": [{"cel": {"expression": cel}}] if cel else []}
    if bandwidth:
        exact["capacity"] = {"requests": {f"{NIC}/bandwidth": bandwidth}}
    return {"name": name, "exactly": exact}


def results(claim: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in claim["status"]["allocation"]["devices"]["results"]:
        out.setdefault(r["request"], []).append(r)
    return out


def bus(env: DraEnv, node: str, driver: str, device: str) -> str:
    spec = next(s for s in env.api.get(f"{RES}/resourceslices")["items"]
                if s["spec"]["nodeName"] == node and s["spec"]["driver"] == driver)["spec"]
    dev = next(d for d in spec["devices"] if d["name"] == device)
    return str(dev["attributes"]["resource.kubernetes.io/pciBusID"]["string"])


def gpu_and_nic(env: DraEnv, pod: str) -> tuple[Any, Any]:
    claim = env.claim_of(pod)
    node = env.bound()[pod]["spec"]["nodeName"]
    got = results(claim)
    return (GPU_BUS[bus(env, node, GPU, got["gpu"][0]["device"])], NIC_BUS[bus(env, node, NIC, got["nic"][0]["device"])])


# -- tests ---------------------------------------------------------------------------------------------


def test_gpu_and_nic_claim_allocated_under_one_pcie_switch(env: DraEnv) -> None:
    [node] = env.add_dra_nodes(1)
    env.template("pair", [gpu(), nic()])
    env.start()
    pod = env.claim_pod("p", "pair")
    bound = kubeutil.wait_for(lambda: env.bound().get("p"), WAIT, "pod p bound")
    assert bound["spec"]["nodeName"] == node
    claim = env.claim_of("p")
    status = claim["status"]
    assert status["reservedFor"] == [{"resource": "pods", "name": "p", "uid": pod["metadata"]["uid"]}]
    assert "resource.kubernetes.io/delete-protection" in claim["metadata"]["finalizers"]
    assert status["allocation"]["nodeSelector"]["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [node]
    got = results(claim)
    assert got["gpu"][0]["driver"] == GPU and got["gpu"][0]["pool"] == node
    assert got["nic"][0]["driver"] == NIC and got["nic"][0]["shareID"]  # a shareable NIC, taken whole
    assert got["nic"][0]["consumedCapacity"][f"{NIC}/bandwidth"] in ("400G", "400000M")
    g, n = gpu_and_nic(env, "p")
    assert g.pcie_switch == n.pcie_switch
    # eight pairs: each pod its own GPU and its own NIC, all same-switch; the ninth waits
    for i in range(7):
        env.claim_pod(f"q{i}", "pair")
    kubeutil.wait_for(lambda: env.bound_count(8), WAIT, "8 pods bound")
    pairs = [gpu_and_nic(env, name) for name in env.bound()]
    assert len({g.index for g, _ in pairs}) == 8 and len({n.pci_address for _, n in pairs}) == 8
    assert all(g.pcie_switch == n.pcie_switch for g, n in pairs)
    env.claim_pod("ninth", "pair")
    env.wait_event("ninth", "free")


def test_ranked_fallback_to_numa_when_the_switch_nic_is_taken(env: DraEnv) -> None:
    env.add_dra_nodes(1)
    env.template("nic0", [nic(cel=f'device.attributes["{NIC}"].rail == 0')])
    env.template("gpus1to7", [gpu(7, cel=f'device.attributes["{GPU}"].index >= 1')])
    env.template("pair", [gpu(), nic()])
    env.template("pair-switch", [gpu(), nic()], [{"requests": ["gpu", "nic"], "matchAttribute": f"{NIC}/pcieSwitch"}])
    env.start()
    env.claim_pod("a", "nic0")
    env.claim_pod("b", "gpus1to7")
    kubeutil.wait_for(lambda: env.bound_count(2), WAIT, "a and b bound")
    # only GPU 0 is left and its switch NIC (0) is taken: the ranked claim gets GPU 0 with a NIC on its
    # NUMA node rather than across the socket ...
    env.claim_pod("ranked", "pair")
    kubeutil.wait_for(lambda: env.bound().get("ranked"), WAIT, "ranked bound")
    g, n = gpu_and_nic(env, "ranked")
    assert g.index == 0 and n.pci_address != TOPO.nics[0].pci_address
    assert n.numa_node == g.numa_node
    # ... while a hard switch constraint cannot be met, and says so
    env.api.request("DELETE", f"/api/v1/namespaces/{env.ns}/pods/ranked?gracePeriodSeconds=0")
    kubeutil.wait_for(lambda: "ranked" not in {p["metadata"]["name"] for p in env.pods()} or None, WAIT, "ranked gone")
    env.claim_pod("strict", "pair-switch")
    env.wait_event("strict", "matchAttribute rdma.railnet.io/pcieSwitch")
    assert "strict" not in env.bound()
    assert not (env.claim_of("strict").get("status") or {}).get("allocation")


def test_gang_whose_claims_do_not_all_fit_allocates_nothing(env: DraEnv) -> None:
    env.add_dra_nodes(1)
    env.template("three", [gpu(3)])
    group = {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": {"name": "g"},
             "spec": {"minMember": 3}}
    status, answer = env.api.request("POST", f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{env.ns}/podgroups", group)
    assert status == 201, answer
    env.start()
    for i in range(3):  # 9 GPUs on an 8-GPU node
        env.claim_pod(f"m{i}", "three", labels={POD_GROUP_LABEL: "g"})
    env.wait_event("m0", "gang")
    kubeutil.wait_for(lambda: len(env.claims()) == 3 or None, WAIT, "3 claims made")
    assert not env.bound()
    assert all(not (c.get("status") or {}).get("allocation") for c in env.claims())
    # with room for all three (a second node) the whole gang is placed and every claim allocated
    env.add_dra_nodes(1)
    kubeutil.wait_for(lambda: env.bound_count(3), WAIT, "the gang bound")
    assert all((c.get("status") or {}).get("allocation") for c in env.claims())


def test_bandwidth_shares_one_nic_and_a_third_waits(env: DraEnv) -> None:
    env.add_dra_nodes(1)
    env.template("half", [nic(cel=f'device.attributes["{NIC}"].rail == 3', bandwidth="200G")])
    env.start()
    env.claim_pod("s1", "half")
    env.claim_pod("s2", "half")
    kubeutil.wait_for(lambda: env.bound_count(2), WAIT, "two shares bound")
    shares = [results(env.claim_of(p))["nic"][0] for p in ("s1", "s2")]
    assert shares[0]["device"] == shares[1]["device"] and shares[0]["shareID"] != shares[1]["shareID"]
    assert {s["consumedCapacity"][f"{NIC}/bandwidth"] for s in shares} == {"200G"}
    env.claim_pod("s3", "half")
    env.wait_event("s3", "no device with room")
    assert "s3" not in env.bound()
    env.api.request("DELETE", f"/api/v1/namespaces/{env.ns}/pods/s1?gracePeriodSeconds=0")
    kubeutil.wait_for(lambda: env.bound().get("s3"), WAIT, "s3 bound once a share is free")


def test_bad_input_gives_events_and_allocates_nothing(env: DraEnv) -> None:
    env.add_dra_nodes(1)
    env.template("no-class", [nic(cls="nobody.railnet.test")])
    env.template("no-attr", [nic(cel=f'device.attributes["{NIC}"].doesNotExist == 1')])
    env.template("too-big", [nic(bandwidth="800G")])
    # (a selector that does not compile never gets here: the API server rejects the template)
    env.start()
    for name in ("no-class", "no-attr", "too-big"):
        env.claim_pod(name, name)
    env.wait_event("no-class", "DeviceClass 'nobody.railnet.test' does not exist")
    env.wait_event("no-attr", "doesNotExist")
    env.wait_event("too-big", "asks for 800000000000")
    assert not env.bound()
    assert all(not (c.get("status") or {}).get("allocation") for c in env.claims())


def test_claims_allocated_by_kube_scheduler_are_accounted(env: DraEnv) -> None:
    [node] = env.add_dra_nodes(1)
    env.template("root-pair", [gpu(), nic()],
                 [{"requests": ["gpu", "nic"], "matchAttribute": "resource.kubernetes.io/pcieRoot"}])
    env.template("eight", [gpu(8)])
    env.template("seven", [gpu(7)])
    env.claim_pod("kube", "root-pair", scheduler="default-scheduler")
    kubeutil.wait_for(lambda: env.bound().get("kube"), WAIT, "kube-scheduler bound its pod")
    kube_gpu, _ = gpu_and_nic(env, "kube")
    env.start()
    env.claim_pod("eight", "eight")
    env.wait_event("eight", "free")
    # (the head of the queue holds the node as it frees up: remove it before the next pod)
    env.api.request("DELETE", f"/api/v1/namespaces/{env.ns}/pods/eight?gracePeriodSeconds=0")
    env.claim_pod("seven", "seven")
    kubeutil.wait_for(lambda: env.bound().get("seven"), WAIT, "seven bound")
    got = {GPU_BUS[bus(env, node, GPU, r["device"])].index for r in results(env.claim_of("seven"))["gpu"]}
    assert len(got) == 7 and kube_gpu.index not in got


def test_claim_gpus_count_in_quota_like_extended_resources(env: DraEnv) -> None:
    env.add_dra_nodes(1)
    env.template("two", [gpu(2)])
    quota = {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "ElasticQuota", "metadata": {"name": "team"},
             "spec": {"min": {"nvidia.com/gpu": 2}, "max": {"nvidia.com/gpu": 3}}}
    status, answer = env.api.request("POST", f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{env.ns}/elasticquotas", quota)
    assert status == 201, answer
    env.start()
    env.claim_pod("first", "two")
    kubeutil.wait_for(lambda: env.bound().get("first"), WAIT, "first bound")
    env.claim_pod("second", "two")  # 2 + 2 > max 3
    env.wait_event("second", "quota team at max nvidia.com/gpu 3 (used 2, asks 2)")
    assert "second" not in env.bound()
    assert not (env.claim_of("second").get("status") or {}).get("allocation")


def test_a_failed_claim_write_puts_back_the_claims_written_before_it(env: DraEnv) -> None:
    """ClaimWriter against the real API server: the second of two claims cannot be written (someone
    changed it since it was read), so the first loses its allocation, reservation and finalizer."""
    api = KubeApi(endpoint_from_config(str(env.cluster.kubeconfig)))
    spec = {"devices": {"requests": [gpu()]}}
    for name in ("c1", "c2"):
        body = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": name}, "spec": spec}
        assert env.api.request("POST", f"{RES}/namespaces/{env.ns}/resourceclaims", body)[0] == 201
    c1, c2 = (parse_claim(env.api.get(f"{RES}/namespaces/{env.ns}/resourceclaims/{n}")) for n in ("c1", "c2"))
    changed = env.api.get(f"{RES}/namespaces/{env.ns}/resourceclaims/c2")
    changed["metadata"]["labels"] = {"touched": "yes"}
    assert env.api.request("PUT", f"{RES}/namespaces/{env.ns}/resourceclaims/c2", changed)[0] == 200
    writes = [Write(c, (Result("gpu", GPU, "node-x", f"gpu-{i}"),), "node-x", "pod-x", f"uid-{i}")
              for i, c in enumerate((c1, c2))]
    with pytest.raises(ClaimWriteError, match="c2"):
        ClaimWriter(api, {}).write_all(writes)
    for name in ("c1", "c2"):
        claim = env.api.get(f"{RES}/namespaces/{env.ns}/resourceclaims/{name}")
        assert not (claim.get("status") or {}).get("allocation"), name
        assert not (claim.get("status") or {}).get("reservedFor"), name
        assert FINALIZER not in (claim["metadata"].get("finalizers") or []), name
