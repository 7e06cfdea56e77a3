"""The Helm chart deploy/helm/railnet: lint-clean, its generated parts current, and the objects it renders
shaped as docs/install.md says (what the API server thinks of them: tests/kube/test_chart_install.py)."""

from __future__ import annotations

import json
from typing import Any

import yaml

from cni.meta.nad import from_nad, nad_view
from ipam.crd import IPPoolSpec
from railnet.dev import chart
from tests.unit.chart_support import GOOD, by_kind, render, run_helm

DEPLOYMENTS = ("railnet-controller", "railnet-scheduler", "railnet-ipam")


def test_helm_lint_is_clean() -> None:
    proc = run_helm("lint", "--strict", str(chart.CHART), "--kube-version", chart.KUBE_VERSION, *GOOD)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


def test_chart_crds_equal_the_generated_ones() -> None:
    assert chart.stale_crds() == [], "run `python -m railnet.dev.chart`"
    assert len(list((chart.CHART / "crds").glob("*.yaml"))) == len(chart.expected_crds()) >= 11


def test_plain_manifests_are_rendered_from_the_chart() -> None:
    assert chart.MANIFESTS.read_text() == chart.render(), "deploy/manifests/railnet.yaml is stale: " \
        "run `python -m railnet.dev.chart`"


def test_every_component_has_its_own_service_account() -> None:
    docs = render()
    accounts = by_kind(docs, "ServiceAccount")
    assert set(accounts) == {"railnet-node", "railnet-controller", "railnet-scheduler", "railnet-ipam"}
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == set(DEPLOYMENTS)
    for name, dep in deployments.items():
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == name
    bindings = by_kind(docs, "ClusterRoleBinding")
    for name, binding in bindings.items():
        (subject,) = binding["subjects"]
        assert subject["name"] in accounts and subject["namespace"] == "railnet-system", name


def test_deployments_are_non_root_read_only_without_capabilities() -> None:
    for name, dep in by_kind(render(), "Deployment").items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert not pod.get("hostNetwork") and not pod.get("hostPID")
        assert all("hostPath" not in v for v in pod.get("volumes", [])), name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]} and "add" not in sc["capabilities"], name
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], name


def test_leader_elected_components_run_two_replicas_spread_over_nodes() -> None:
    deployments = by_kind(render(), "Deployment")
    for name in ("railnet-controller", "railnet-scheduler"):
        dep = deployments[name]
        assert dep["spec"]["replicas"] == 2
        pod = dep["spec"]["template"]["spec"]
        (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
        args = pod["containers"][0]["args"]
        # the lease lives in the chart's namespace, where the component's Role lets it write only its own
        assert "--lease-namespace=railnet-system" in args and f"--lease-name={name}" in args
        assert "--identity=$(POD_NAME)" in args
    assert deployments["railnet-ipam"]["spec"]["replicas"] == 1
    pdbs = by_kind(render(), "PodDisruptionBudget")
    assert set(pdbs) == {"railnet-controller", "railnet-scheduler"}
    for name, pdb in pdbs.items():
        assert pdb["spec"] == {"maxUnavailable": 1, "selector": deployments[name]["spec"]["selector"]}
    assert "railnet-controller" not in by_kind(render("--set", "controller.replicas=1"), "PodDisruptionBudget")
    assert deployments["railnet-ipam"]["spec"]["strategy"] == {"type": "Recreate"}


def test_each_component_serves_metrics_behind_a_headless_service() -> None:
    docs = render()
    services = by_kind(docs, "Service")
    assert set(services) == {"railnet-node-metrics", "railnet-controller-metrics", "railnet-scheduler-metrics"}
    for dep_name in ("railnet-controller", "railnet-scheduler"):
        dep = by_kind(docs, "Deployment")[dep_name]
        svc = services[f"{dep_name}-metrics"]
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        (port,) = container["ports"]
        assert port["name"] == "metrics" and f"--metrics-port={port['containerPort']}" in container["args"]
        assert svc["spec"]["ports"][0]["port"] == port["containerPort"]
    assert not by_kind(docs, "ServiceMonitor") and "railnet-dashboard" not in by_kind(docs, "ConfigMap")


def test_service_monitor_and_dashboard_only_when_enabled() -> None:
    docs = render("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.dashboard.enabled=true")
    monitor = by_kind(docs, "ServiceMonitor")["railnet"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"]["railnet.io/metrics"] == "true"
    dashboard = by_kind(docs, "ConfigMap")["railnet-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["railnet.json"]) == json.loads(
        (chart.CHART / "dashboards" / "railnet.json").read_text())


def test_components_can_be_left_out() -> None:
    docs = render("--set", "components.node=false", "--set", "components.dra=false", "--set",
                  "components.ipam=false", "--set", "components.scheduler=false")
    assert set(by_kind(docs, "Deployment")) == {"railnet-controller"}
    assert set(by_kind(docs, "ServiceAccount")) == {"railnet-controller"}
    assert not by_kind(docs, "ValidatingAdmissionPolicy")
    (ctl,) = by_kind(docs, "Deployment").values()
    # no railnet scheduler in this install: jobs' pods are not handed to it
    assert "--no-gang-scheduling" in ctl["spec"]["template"]["spec"]["containers"][0]["args"]
    # no primary conflist is needed without the node agent
    assert render("--set", "components.node=false", "--set", "components.dra=false", "--set", "cni.primaryConflist=")


def test_dra_role_only_with_dra() -> None:
    assert "railnet-node-dra" in by_kind(render(), "ClusterRole")
    assert "railnet-node-dra" not in by_kind(render("--set", "components.dra=false"), "ClusterRole")


def test_namespace_is_labelled_for_pod_security() -> None:
    (ns,) = by_kind(render(), "Namespace").values()
    assert ns["metadata"]["name"] == "railnet-system"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/audit"] == "restricted"
    assert not by_kind(render("--set", "namespace.create=false"), "Namespace")
    other = render("--set", "namespace.name=rn")
    assert {d["metadata"].get("namespace") for d in other if d["kind"] in ("Deployment", "ServiceAccount")} == {"rn"}


def test_pools_and_rails_render_ippools_and_nads() -> None:
    docs = render("--set-json", 'pools=[{"name":"rail0","subnet":"172.30.0.0/16","gateway":"172.30.0.1",'
                  '"blockSize":26,"ranges":[{"start":"172.30.0.16","end":"172.30.254.254"}],"rail":0}]',
                  "--set-json", 'rails=[{"name":"rails","auto":true,"pool":"rail{rail}","mtu":4200,'
                  '"namespaces":["default","team-a"]},{"name":"storage","rdmaDevice":"mlx5_0"}]')
    pool = by_kind(docs, "IPPool")["rail0"]
    assert pool["spec"] == {"subnet": "172.30.0.0/16", "gateway": "172.30.0.1", "blockSize": 26,
                            "ranges": [{"start": "172.30.0.16", "end": "172.30.254.254"}], "rail": 0}
    IPPoolSpec.model_validate(pool["spec"])  # what the agent will parse
    nads = [d for d in docs if d["kind"] == "NetworkAttachmentDefinition"]
    assert sorted((d["metadata"]["name"], d["metadata"]["namespace"]) for d in nads) == [
        ("rails", "default"), ("rails", "team-a"), ("storage", "default")]
    confs = {d["metadata"]["name"]: json.loads(d["spec"]["config"]) for d in nads}
    assert confs["rails"] == {"cniVersion": "1.1.0", "name": "rails", "type": "railnet-macvlan", "mode": "bridge",
                              "rail": "auto", "mtu": 4200, "ipam": {"type": "railnet-ipam", "pool": "rail{rail}"}}
    assert confs["storage"] == {"cniVersion": "1.1.0", "name": "storage", "type": "railnet-macvlan",
                                "mode": "bridge", "rdmaDevice": "mlx5_0",
                                "ipam": {"type": "railnet-ipam", "pool": "storage"}}
    for d in nads:  # as the meta plugin reads them
        conflist = from_nad(d["metadata"]["namespace"], d["metadata"]["name"], nad_view(d), chart.REPO / "nowhere")
        assert conflist["plugins"][0]["type"] == "railnet-macvlan"
    args = by_kind(docs, "Deployment")["railnet-controller"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--rail-networks=rails" in args  # only the auto rails: the allocation decides the NICs
    assert not any(a.startswith("--rail-networks") for a in by_kind(render(), "Deployment")["railnet-controller"]
                   ["spec"]["template"]["spec"]["containers"][0]["args"])


def test_pool_schema_has_the_ippool_fields() -> None:
    schema = json.loads((chart.CHART / "values.schema.json").read_text())
    props = set(schema["properties"]["pools"]["items"]["properties"])
    model = {f.alias or name for name, f in IPPoolSpec.model_fields.items()}
    assert props == model | {"name"}, "values.schema.json pools must offer exactly the IPPool spec fields"


def test_values_table_documents_every_value() -> None:
    doc = (chart.REPO / "docs" / "install.md").read_text()
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())

    def leaves(prefix: str, node: Any) -> list[str]:
        if isinstance(node, dict) and node and not prefix.endswith(("resources", "nodeSelector", "labels")):
            return [k for key, v in node.items() for k in leaves(f"{prefix}.{key}" if prefix else key, v)]
        return [prefix]

    missing = [k for k in leaves("", values) if f"`{k}`" not in doc]
    assert not missing, f"docs/install.md's values table lacks {missing}"


def test_node_metrics_service_reaches_the_agent() -> None:
    docs = render()
    ds = by_kind(docs, "DaemonSet")["railnet-node"]
    (agent,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"]
    svc = by_kind(docs, "Service")["railnet-node-metrics"]
    assert svc["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]
    assert f"--metrics-port={svc['spec']['ports'][0]['targetPort']}" in agent["args"]
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == "railnet-node"


def test_every_value_is_used_by_a_template() -> None:
    """A value no template reads is a setting that silently does nothing."""
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    text = "\n".join(p.read_text() for p in (chart.CHART / "templates").iterdir())

    def keys(node: Any, path: str = "") -> list[str]:
        if isinstance(node, dict) and node and not path.endswith(("resources", "nodeSelector", "labels")):
            return [k for key, v in node.items() for k in keys(v, f"{path}.{key}" if path else key)]
        return [path]

    unused = [k for k in keys(values) if f".{k.rsplit('.', 1)[-1]}" not in text and f'"{k.rsplit(".", 1)[-1]}"' not in text]
    assert not unused, f"values no template reads: {unused}"
