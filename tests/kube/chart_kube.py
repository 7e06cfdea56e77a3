"""The Helm chart against the dev cluster's API server: render it into a namespace of its own, install
the parts a test needs for real, remove everything (cluster-scoped objects included) afterwards."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.dynamic import DynamicClient

from railnet.dev.devcluster import DevCluster
from tests.kube import kubeutil
from tests.unit.chart_support import render

FIRST = ("CustomResourceDefinition", "Namespace")  # applied for real first: the rest may use them
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
              "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def render_into(namespace: str, *args: str) -> list[dict[str, Any]]:
    return render("--set", f"namespace.name={namespace}", *args, crds=True)


def path_of(doc: dict[str, Any], dyn: DynamicClient) -> str:
    res = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
    base = f"/apis/{doc['apiVersion']}" if "/" in doc["apiVersion"] else "/api/v1"
    ns = doc["metadata"].get("namespace")
    return f"{base}{f'/namespaces/{ns}' if ns and res.namespaced else ''}/{res.name}/{doc['metadata']['name']}"


@contextmanager
def installed(cluster: DevCluster, dyn: DynamicClient, docs: Iterable[dict[str, Any]],
              kinds: tuple[str, ...] | None = None) -> Iterator[list[dict[str, Any]]]:
    """Apply the CRDs and the namespace, then `docs` of `kinds` (all when None), for real; delete them after.

    CRDs stay (the session's other tests use the same ones); everything else is deleted.
    """
    docs = list(docs)
    first = [d for d in docs if d["kind"] in FIRST]
    rest = [d for d in docs if d["kind"] not in FIRST and (kinds is None or d["kind"] in kinds)]
    applied: list[dict[str, Any]] = []
    try:
        kubeutil.apply(dyn, first)
        applied += [d for d in first if d["kind"] == "Namespace"]
        for doc in rest:
            kubeutil.apply(dyn, [doc])
            applied.append(doc)
        yield rest
    finally:
        api = cluster.api()
        for doc in reversed(applied):
            api.request("DELETE", path_of(doc, dyn))


def unique_namespace() -> str:
    return f"railnet-t{uuid.uuid4().hex[:6]}"


def sa_user(namespace: str, component: str) -> tuple[str, list[str]]:
    return (f"system:serviceaccount:{namespace}:railnet-{component}",
            ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"])


def allowed(cluster: DevCluster, user: tuple[str, list[str]], verb: str, resource: str, group: str = "",
            namespace: str = "", subresource: str = "", name: str = "") -> bool:
    """A SubjectAccessReview: may `user` do this (RBAC as the API server's authorizer answers)?"""
    attrs = {"verb": verb, "resource": resource, "group": group, "namespace": namespace,
             "subresource": subresource, "name": name}
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user[0], "groups": user[1], "resourceAttributes": {k: v for k, v in attrs.items() if v}}}
    status, answer = cluster.api().request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body)
    assert status == 201, answer
    return bool(answer["status"].get("allowed"))


class TokenApi:
    """Requests with a bearer token (a ServiceAccount's), to see what admission says, not only RBAC."""

    def __init__(self, cluster: DevCluster, token: str) -> None:
        self.server = cluster.api().server
        self.token = token
        self._ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=10) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def merge_patch(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("PATCH", path, body, "application/merge-patch+json")


@pytest.fixture(scope="module")
def chart_ns(cluster: DevCluster, dyn: DynamicClient) -> Iterator[str]:
    """A namespace with the chart's ServiceAccounts, roles and the own-node policy installed (module-wide)."""
    ns = unique_namespace()
    with installed(cluster, dyn, render_into(ns), RBAC_KINDS):
        yield ns


def node_bound_token(cluster: DevCluster, ns: str, node: str) -> str:
    """A token of railnet-node bound to a pod on `node`: what the DaemonSet's pod on that node holds."""
    api = cluster.api()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"agent-{node}", "namespace": ns},
           "spec": {"serviceAccountName": "railnet-node", "nodeName": node,
                    "containers": [{"name": "agent", "image": "railnet.local/none"}]}}
    status, created = api.request("POST", f"/api/v1/namespaces/{ns}/pods", pod)
    assert status == 201, created
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600, "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                                                    "name": pod["metadata"]["name"],
                                                                    "uid": created["metadata"]["uid"]}}}
    status, answer = api.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/railnet-node/token", body)
    assert status == 201, answer
    return str(answer["status"]["token"])


def sa_token(cluster: DevCluster, ns: str, account: str) -> str:
    """A token of a ServiceAccount bound to no object (as a Deployment's pod would hold, minus the pod)."""
    status, answer = cluster.api().request(
        "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    assert status == 201, answer
    return str(answer["status"]["token"])


def token_kubeconfig(cluster: DevCluster, token: str, path: Path) -> Path:
    """The dev cluster's kubeconfig with its user replaced by `token`: a component's own identity."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path
