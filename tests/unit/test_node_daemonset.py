"""The chart's DaemonSet railnet-node as docs/install.md describes it: least privilege, the init step's
values, a readiness probe that makes a CNI call, and a rolling update that starts the new pod first.
(It running for real: tests/node/test_install.py.)"""

from __future__ import annotations

from typing import Any

from tests.unit.chart_support import by_kind, render


def daemonset(*args: str) -> dict[str, Any]:
    return by_kind(render(*args), "DaemonSet")["railnet-node"]


def test_the_pod_runs_on_the_host_network_first_and_never_privileged() -> None:
    ds = daemonset()
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    assert pod["priorityClassName"] == "system-node-critical" and pod["serviceAccountName"] == "railnet-node"
    init, agent = pod["initContainers"][0], pod["containers"][0]
    for container in (init, agent):
        ctx = container["securityContext"]
        assert not ctx.get("privileged") and ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True and ctx["capabilities"]["drop"] == ["ALL"]
        assert "ports" not in container  # host ports would keep the surge pod off the node
    assert "add" not in init["securityContext"]["capabilities"]
    assert sorted(agent["securityContext"]["capabilities"]["add"]) == [
        "NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE"]


def test_install_cni_gets_the_values_and_only_the_cni_dirs() -> None:
    pod = daemonset("--set", "cni.binDir=/opt/cni/bin", "--set", "node.socket=/run/railnet/a.sock")[
        "spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["args"] == ["install-cni", "--shim=native", "--dest=/opt/cni/bin", "--conf-dir=/etc/cni/net.d",
                            "--primary-conflist=10-calico.conflist", "--agent-socket=/run/railnet/a.sock"]
    assert sorted(m["mountPath"] for m in init["volumeMounts"]) == ["/etc/cni/net.d", "/opt/cni/bin"]


def test_the_agent_serves_takes_over_and_is_ready_only_when_a_call_is_served() -> None:
    agent = daemonset("--set", "node.socket=/run/railnet/a.sock")["spec"]["template"]["spec"]["containers"][0]
    assert {"agent", "--takeover", "--in-cluster", "--node-name=$(NODE_NAME)", "--socket=/run/railnet/a.sock",
            "--metrics-port=9401"} <= set(agent["args"])
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["RAILNET_HOST_ROOT"]["value"] == "runtime"
    probe = agent["readinessProbe"]["exec"]["command"]
    assert probe[:3] == ["python3", "-m", "netmanager.probe"] and "--socket=/run/railnet/a.sock" in probe


def test_host_paths_are_only_what_the_agent_needs() -> None:
    def paths(*args: str) -> set[str]:
        pod = daemonset(*args)["spec"]["template"]["spec"]
        return {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}

    base = {"/opt/cni/bin", "/etc/cni/net.d", "/run/railnet", "/var/lib/railnet", "/var/lib/kubelet/pod-resources"}
    assert paths("--set", "components.dra=false") == base
    assert paths() == base | {"/var/run/cdi", "/var/lib/kubelet/plugins", "/var/lib/kubelet/plugins_registry"}


def test_the_node_component_can_be_left_out() -> None:
    assert "railnet-node" not in by_kind(render("--set", "components.node=false", "--set", "components.dra=false"),
                                         "DaemonSet")
