"""Helpers for tests against the dev control plane: apply manifests, wait for conditions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes.dynamic import DynamicClient

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
FIELD_MANAGER = "railnet-tests"

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.1) -> T:
    """Call `probe` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def manifest_files(root: Path = DEPLOY) -> list[Path]:
    """Every YAML manifest under deploy/, CRDs first (other manifests may use their kinds).

    Not the Helm chart (templates, values) nor the manifests rendered from it: test_chart_install.py
    dry-runs those, in their own namespace.
    """
    skip = (root / "helm", root / "manifests")
    files = sorted(p for p in root.rglob("*.y*ml") if p.suffix in (".yaml", ".yml")
                   and not any(d in p.parents for d in skip))
    return sorted(files, key=lambda p: (0 if "crds" in p.parts else 1, str(p)))


def load(paths: Iterable[Path]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def apply(dyn: DynamicClient, docs: Iterable[dict[str, Any]], namespace: str | None = None,
          dry_run: bool = False) -> list[Any]:
    """Server-side apply each document (like `kubectl apply --server-side`), optionally as a dry run.

    Namespaced objects without a namespace go to `namespace`. CRDs are waited for until Established,
    so later documents can use their kinds.
    """
    results = []
    for doc in docs:
        api = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        body = dict(doc)
        ns = None
        if api.namespaced:
            ns = body.get("metadata", {}).get("namespace") or namespace
            if ns is None:
                raise ValueError(f"{doc['kind']}/{doc['metadata']['name']} is namespaced; give a namespace")
            body["metadata"] = {**body["metadata"], "namespace": ns}
        kwargs: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force_conflicts": True}
        if dry_run:
            kwargs["dry_run"] = "All"
        obj = api.server_side_apply(body=body, namespace=ns, **kwargs)
        results.append(obj)
        if doc["kind"] == "CustomResourceDefinition" and not dry_run:
            wait_established(dyn, doc["metadata"]["name"])
    if any(d["kind"] == "CustomResourceDefinition" for d in docs) and not dry_run:
        dyn.resources.invalidate_cache()  # discovery must learn the new kinds
    return results


def wait_established(dyn: DynamicClient, name: str, timeout: float = 30.0) -> None:
    crds = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")

    def established() -> bool:
        conds = crds.get(name=name).to_dict().get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    wait_for(established, timeout, f"CRD {name} to be Established")
