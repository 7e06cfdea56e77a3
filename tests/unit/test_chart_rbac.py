"""The chart's RBAC is the one that is installed; deploy/scheduler/rbac.yaml and deploy/jobs/rbac.yaml are
the dev cluster's copies (ServiceAccounts in kube-system, used by the kube and node tests). They must
grant exactly the same permissions: compared here rule by rule, expanded to single permissions."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube import kubeutil
from tests.unit.chart_support import by_kind, render

Permission = tuple[str, str, str, str]  # (apiGroup, resource, verb, resourceName or "*")


def permissions(rules: list[dict[str, Any]]) -> set[Permission]:
    return {(g, r, v, n) for rule in rules for g in rule.get("apiGroups", []) for r in rule.get("resources", [])
            for v in rule.get("verbs", []) for n in (rule.get("resourceNames") or ["*"])}


@pytest.mark.parametrize(("component", "copy"), [("scheduler", "scheduler"), ("controller", "jobs")])
def test_chart_rbac_equals_the_dev_copy(component: str, copy: str) -> None:
    chart = render()
    dev = kubeutil.load([kubeutil.DEPLOY / copy / "rbac.yaml"])
    for kind, name in (("ClusterRole", f"railnet-{component}"), ("Role", f"railnet-{component}-lease")):
        ours = permissions(by_kind(chart, kind)[name]["rules"])
        theirs = permissions(by_kind(dev, kind)[name]["rules"])
        assert ours == theirs, (f"{kind} {name}: only in the chart {sorted(ours - theirs)}, only in "
                                f"deploy/{copy}/rbac.yaml {sorted(theirs - ours)}: make them equal")


def test_no_component_may_read_secrets_or_escalate() -> None:
    for name, role in {**by_kind(render(), "ClusterRole"), **by_kind(render(), "Role")}.items():
        perms = permissions(role["rules"])
        assert not any(p[0] == "*" or p[1] == "*" or p[2] == "*" for p in perms), name
        assert not any(p[1] in ("secrets", "configmaps") for p in perms), name
        assert not any(p[2] in ("escalate", "bind", "impersonate") for p in perms), name
        assert not any(p[0] == "rbac.authorization.k8s.io" for p in perms), name
