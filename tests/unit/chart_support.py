"""Rendering the Helm chart in tests: the pinned helm (railnet.dev.tools), values as --set flags."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from railnet.dev import chart, k8sbin, tools

GOOD = ("--set", "cni.primaryConflist=10-calico.conflist")


def helm_path() -> str:
    """The pinned helm; the test fails (never skips) with what to run when it is not built."""
    try:
        return str(tools.helm())
    except k8sbin.BuildError as exc:
        pytest.fail(f"{exc} (`make test` builds it)", pytrace=False)


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_path(), *args], capture_output=True, text=True, timeout=120, check=False)


def render(*args: str, crds: bool = False) -> list[dict[str, Any]]:
    """The chart's objects with the default values plus `args` (GOOD first: later --set wins)."""
    cmd = ["template", chart.RELEASE, str(chart.CHART), "--namespace", "railnet-system",
           "--kube-version", chart.KUBE_VERSION, *GOOD, *args]
    if crds:
        cmd.append("--include-crds")
    proc = run_helm(*cmd)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_error(*args: str) -> str:
    """helm's message for values that must be refused (the render must fail)."""
    proc = run_helm("template", chart.RELEASE, str(chart.CHART), "--namespace", "railnet-system",
                    "--kube-version", chart.KUBE_VERSION, *args)
    assert proc.returncode != 0, f"rendered with {args}, should have failed:\n{proc.stdout[:500]}"
    return proc.stderr


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
