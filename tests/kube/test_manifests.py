"""Every manifest in deploy/ is accepted by the real API server (server-side dry-run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes.dynamic import DynamicClient

from tests.kube import kubeutil

MANIFESTS = kubeutil.manifest_files()


def test_deploy_has_manifests() -> None:
    assert any("crds" in p.parts for p in MANIFESTS), "deploy/crds is empty: run python -m railnet.dev.crdgen"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(kubeutil.DEPLOY)))
def test_manifest_accepted_by_api_server(path: Path, dyn: DynamicClient, namespace: str,
                                         railnet_crds: Any) -> None:
    docs = kubeutil.load([path])
    assert docs, f"{path} holds no objects"
    results = kubeutil.apply(dyn, docs, namespace=namespace, dry_run=True)
    for doc, obj in zip(docs, results, strict=True):
        assert obj.kind == doc["kind"]
        assert obj.metadata.name == doc["metadata"]["name"]
        # What the server stores keeps every field we sent (nothing pruned as unknown).
        if "spec" in doc:
            sent, kept = doc["spec"], obj.to_dict()["spec"]
            assert _contains(kept, sent), f"{path}: the API server pruned fields of {doc['kind']}"


def _contains(big: Any, small: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _contains(big[k], v) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(big) == len(small) and all(map(_contains, big, small))
    return bool(big == small)
