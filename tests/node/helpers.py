"""Pod manifests and probes for the real-node tests."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from kubernetes import client

from railnet.dev import images, node
from tests.kube.kubeutil import wait_for

SERVER = "import http.server as h; h.ThreadingHTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()"


def pod(name: str, command: list[str], *, host_network: bool = False, labels: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeSelector": {node.REAL_NODE_LABEL: "true"},
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": images.TESTBOX_IMAGE, "imagePullPolicy": "Never",
                        "command": command}],
    }
    if host_network:
        spec.update(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet")
    spec.update(extra or {})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def web_pod(name: str = "web") -> dict[str, Any]:
    return pod(name, ["python3", "-c", SERVER], labels={"app": name})


def sleeper(name: str, **kw: Any) -> dict[str, Any]:
    return pod(name, ["sleep", "infinity"], **kw)


def running(core: client.CoreV1Api, ns: str, name: str, timeout: float = 180) -> client.V1Pod:
    def probe() -> client.V1Pod | None:
        p = core.read_namespaced_pod(name, ns)
        if p.status.phase in ("Failed", "Succeeded"):
            raise AssertionError(f"pod {ns}/{name} ended: {p.status}")
        return p if p.status.phase == "Running" and p.status.pod_ip else None

    try:
        return wait_for(probe, timeout, f"pod {ns}/{name} Running", interval=0.5)
    except AssertionError:
        events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
        raise AssertionError(f"pod {ns}/{name} not Running; events: "
                             f"{[(e.reason, e.message) for e in events][-8:]}") from None


def gone(core: client.CoreV1Api, ns: str, name: str, timeout: float = 120) -> None:
    def probe() -> bool:
        return not any(p.metadata.name == name for p in core.list_namespaced_pod(ns).items)

    wait_for(probe, timeout, f"pod {ns}/{name} deleted", interval=0.5)


def in_pod_cidr(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


def bridge_ports(bridge: str) -> set[str]:
    d = Path(f"/sys/class/net/{bridge}/brif")
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def ipam_ips(layout: node.Layout) -> set[str]:
    d = layout.dir / "cni" / "ipam" / "railnet-primary"
    return {p.name for p in d.iterdir() if p.name[0].isdigit()} if d.is_dir() else set()


def netns_mounts(layout: node.Layout) -> list[str]:
    return [m for m in node.mounts_under(layout.dir) if "/netns/" in m]
