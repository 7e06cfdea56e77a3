"""Pods on the real node: they run, get the primary network, talk TCP, resolve Services, and leave nothing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from railnet.dev import node
from railnet.dev.devcluster import _alive
from tests.kube.kubeutil import wait_for
from tests.node import helpers as h
from tests.node.conftest import RealNode

FETCH = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=10).status)"


def _fetch(rn: RealNode, ns: str, pod: str, url: str) -> str:
    """GET url from inside a pod, retried: a Service's iptables rules appear a moment after its endpoints."""
    last = ""
    for _ in range(30):
        proc = rn.kubectl("-n", ns, "exec", pod, "--", "python3", "-c", FETCH, url, check=False)
        if proc.returncode == 0:
            return proc.stdout.strip()
        last = proc.stderr + proc.stdout
        time.sleep(2)
    raise AssertionError(f"{pod} could not GET {url}: {last[-800:]}")


def _exec(rn: RealNode, ns: str, pod: str, *cmd: str) -> str:
    """kubectl exec, retried while kubelet's runtime cache does not know the new container yet."""
    last = ""
    for _ in range(30):
        proc = rn.kubectl("-n", ns, "exec", pod, "--", *cmd, check=False)
        if proc.returncode == 0:
            return proc.stdout
        last = proc.stderr + proc.stdout
        time.sleep(2)
    raise AssertionError(f"kubectl exec {pod} {' '.join(cmd)} kept failing: {last[-800:]}")


def test_pod_runs_on_the_primary_network_and_talks_tcp(real_node: RealNode, ns: str) -> None:
    core = real_node.core
    core.create_namespaced_pod(ns, h.web_pod())
    core.create_namespaced_pod(ns, h.sleeper("client"))
    web = h.running(core, ns, "web")
    h.running(core, ns, "client")
    assert web.spec.node_name == real_node.name
    cidr = str(real_node.info["pod_cidr"])
    eth0 = _exec(real_node, ns, "web", "ip", "-4", "-o", "addr", "show", "eth0")
    assert web.status.pod_ip in eth0 and h.in_pod_cidr(web.status.pod_ip, cidr), (eth0, cidr)
    assert _fetch(real_node, ns, "client", f"http://{web.status.pod_ip}:8080/") == "200"
    logs = real_node.kubectl("-n", ns, "logs", "web").stdout
    assert '"GET / HTTP/1.1" 200' in logs, logs


def test_service_dns_from_a_pod_and_a_host_network_pod(real_node: RealNode, ns: str) -> None:
    core = real_node.core
    core.create_namespaced_pod(ns, h.web_pod())
    core.create_namespaced_service(ns, client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(selector={"app": "web"}, ports=[client.V1ServicePort(port=80, target_port=8080)])))
    core.create_namespaced_pod(ns, h.sleeper("client"))
    core.create_namespaced_pod(ns, h.sleeper("hostclient", host_network=True))
    for name in ("web", "client", "hostclient"):
        h.running(core, ns, name)
    url = f"http://web.{ns}.svc.cluster.local/"
    assert _fetch(real_node, ns, "client", url) == "200"
    assert _fetch(real_node, ns, "hostclient", url) == "200"
    resolv = _exec(real_node, ns, "hostclient", "cat", "/etc/resolv.conf")
    assert node.DNS_SERVICE_IP in resolv, resolv


PROBE = ("import socket, sys\n"
         "try:\n"
         "    socket.create_connection((sys.argv[1], 80), timeout=5); print('connected')\n"
         "except ConnectionRefusedError: print('refused')\n"
         "except OSError as e: print(type(e).__name__, e)\n")


def test_a_clusterip_with_no_rules_is_refused_on_the_machine(real_node: RealNode, ns: str) -> None:
    """Traffic to a ClusterIP kube-proxy has not programmed must not follow the machine's default route
    out: the node rejects it (railnet.dev.node.guard_service_cidr), from pods and from the host."""
    import ipaddress
    import socket

    from railnet.dev.devcluster import SERVICE_CIDR

    unused = str(ipaddress.ip_network(SERVICE_CIDR).broadcast_address - 1)  # no Service gets this one here
    core = real_node.core
    core.create_namespaced_pod(ns, h.sleeper("client"))
    core.create_namespaced_pod(ns, h.sleeper("hostclient", host_network=True))
    for name in ("client", "hostclient"):
        h.running(core, ns, name)
        assert _exec(real_node, ns, name, "python3", "-c", PROBE, unused).strip() == "refused", name
    started = time.monotonic()
    try:
        socket.create_connection((unused, 80), timeout=5).close()
        raise AssertionError(f"connected to {unused}:80, an address no Service holds")
    except ConnectionRefusedError:
        assert time.monotonic() - started < 2


def test_privileged_host_network_daemonset_with_host_path(real_node: RealNode, ns: str) -> None:
    host_dir = real_node.layout.dir / "ds-hostpath"
    host_dir.mkdir(exist_ok=True)
    pod = h.pod("x", ["sh", "-c", "ip link show > /host/links && sleep infinity"], host_network=True, extra={
        "volumes": [{"name": "host", "hostPath": {"path": str(host_dir), "type": "Directory"}}],
    })["spec"]
    pod["containers"][0].update(securityContext={"privileged": True},
                                volumeMounts=[{"name": "host", "mountPath": "/host"}])
    real_node.apps.create_namespaced_daemon_set(ns, {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "installer"},
        "spec": {"selector": {"matchLabels": {"app": "installer"}},
                 "template": {"metadata": {"labels": {"app": "installer"}}, "spec": pod}},
    })

    def ready() -> bool:
        ds = real_node.apps.read_namespaced_daemon_set("installer", ns)
        return bool(ds.status.number_ready == 1 and ds.status.desired_number_scheduled == 1)

    wait_for(ready, 180, "DaemonSet installer ready on the real node", interval=0.5)
    links = wait_for(lambda: (host_dir / "links").is_file() and (host_dir / "links").read_text(), 60,
                     "the DaemonSet pod writing into its hostPath")
    assert real_node.layout.bridge in links  # it saw the host's interfaces: host network
    real_node.apps.delete_namespaced_daemon_set("installer", ns)


def test_deleting_pods_removes_netns_veths_and_ips(real_node: RealNode, ns: str) -> None:
    core, lay = real_node.core, real_node.layout
    ports0, ips0, netns0 = h.bridge_ports(lay.bridge), h.ipam_ips(lay), set(h.netns_mounts(lay))
    for i in range(3):
        core.create_namespaced_pod(ns, h.sleeper(f"p{i}"))
    ips = {h.running(core, ns, f"p{i}").status.pod_ip for i in range(3)}
    assert ips <= h.ipam_ips(lay)
    assert len(h.bridge_ports(lay.bridge) - ports0) == 3
    assert len(set(h.netns_mounts(lay)) - netns0) == 3
    for i in range(3):
        core.delete_namespaced_pod(f"p{i}", ns, grace_period_seconds=0)
    for i in range(3):
        h.gone(core, ns, f"p{i}")
    wait_for(lambda: h.bridge_ports(lay.bridge) <= ports0, 120, "the pods' veths removed from the bridge")
    wait_for(lambda: not (ips & h.ipam_ips(lay)), 60, "the pods' IPs released by host-local")
    wait_for(lambda: set(h.netns_mounts(lay)) <= netns0, 60, "the pods' netns unmounted")
    assert not (ips & h.ipam_ips(lay)) and h.ipam_ips(lay) <= ips0 | h.ipam_ips(lay)


def test_node_components_have_least_privilege(real_node: RealNode, ns: str) -> None:
    """Real requests with each component's own kubeconfig: what it needs works, the rest is 403."""
    real_node.core.create_namespaced_secret(ns, {"metadata": {"name": "s"}, "stringData": {"k": "v"}})

    def api(component: str) -> client.CoreV1Api:
        path = real_node.layout.dir / f"{component}.kubeconfig"
        return client.CoreV1Api(config.new_client_from_config(config_file=str(path)))

    def forbidden(call: Callable[[], object]) -> bool:
        try:
            call()
        except ApiException as exc:
            return exc.status == 403
        return False

    kubelet, proxy, dns = api("kubelet"), api("kube-proxy"), api("coredns")
    assert kubelet.read_node(real_node.name).metadata.name == real_node.name
    assert forbidden(lambda: kubelet.read_namespaced_secret("s", ns))  # no pod on this node mounts it
    assert forbidden(lambda: kubelet.list_secret_for_all_namespaces())
    assert forbidden(lambda: kubelet.patch_node("kwok-node-0", {"metadata": {"labels": {"x": "y"}}}))  # another node
    assert forbidden(lambda: kubelet.delete_namespace(ns))
    assert proxy.list_service_for_all_namespaces().items is not None
    assert forbidden(lambda: proxy.read_namespaced_secret("s", ns))
    assert forbidden(lambda: proxy.create_namespaced_pod(ns, h.sleeper("nope")))
    assert dns.list_namespace().items
    assert forbidden(lambda: dns.read_namespaced_secret("s", ns))
    assert forbidden(lambda: dns.create_namespaced_pod(ns, h.sleeper("nope")))
    assert forbidden(lambda: dns.delete_namespaced_service("kube-dns", "kube-system"))


def test_down_after_a_failed_test_leaves_nothing(real_node: RealNode, ns: str) -> None:
    # Leave what a failing test would: running pods (one on the host network), a Service, a DaemonSet.
    core = real_node.core
    core.create_namespaced_pod(ns, h.web_pod())
    core.create_namespaced_pod(ns, h.sleeper("hostnet", host_network=True))
    core.create_namespaced_service(ns, client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(selector={"app": "web"}, ports=[client.V1ServicePort(port=80, target_port=8080)])))
    h.running(core, ns, "web")
    h.running(core, ns, "hostnet")
    lay = real_node.layout
    assert node.mounts_under(lay.dir) and node.cgroup_dirs(lay.cgroup) and node.bridge_exists(lay.bridge)
    assert any("KUBE-SERVICES" in r for r in node.iptables_rules())
    cluster = real_node.cluster
    pids = [int(p["pid"]) for p in cluster.state()["processes"].values()]
    cluster.down(log=lambda _: None)
    assert node.leftovers(lay, real_node.before) == []
    assert not any(os.path.exists(f"/proc/{p}") and _alive(p, None) for p in pids)
    assert not node.shim_processes(lay.socket)
    assert not cluster.dir.exists()
