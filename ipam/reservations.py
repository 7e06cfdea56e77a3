"""Fixed IPs per job replica or StatefulSet pod: IPReservation objects keyed by owner.

The owner is the pod's controller (ownerReference with controller=true); the key adds the replica
type and index from well-known labels. The address comes from the pool's fixedRanges and is claimed
cluster-wide as a one-address IPPoolBlock (node ''), so it can follow its owner to any node. The
reservation carries an ownerReference to the owner, so the garbage collector deletes it with the
owner and never earlier; the IPAM controller then frees the address claim.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from cni.spec.errors import POOL_FULL, CniError
from ipam import addrset
from ipam.crd import BLOCK_KIND, GROUP, POOL_LABEL, RESERVATION_KIND, VERSION, IPPoolSpec, block_name
from ipam.kubeapi import ApiError

if TYPE_CHECKING:
    from ipam.cluster import ClusterStore, PodRef

# (replica type label, index label): Kubeflow training jobs, then plain indexed Jobs and StatefulSets.
_INDEX_LABELS = (
    ("training.kubeflow.org/replica-type", "training.kubeflow.org/replica-index"),
    ("", "batch.kubernetes.io/job-completion-index"),
    ("", "apps.kubernetes.io/pod-index"),
)


def owner_key(pod: dict[str, Any]) -> dict[str, Any] | None:
    """{kind, name, uid, replicaType, index, apiVersion} of a pod's controller, or None if it has none."""
    meta = pod.get("metadata", {})
    labels = meta.get("labels") or {}
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    if owner is None:
        return None
    for type_label, index_label in _INDEX_LABELS:
        if index_label in labels and str(labels[index_label]).isdigit():
            return {"kind": owner["kind"], "name": owner["name"], "uid": owner["uid"],
                    "apiVersion": owner["apiVersion"], "replicaType": labels.get(type_label, "") if type_label else "",
                    "index": int(labels[index_label])}
    return None


def reservation_name(pool: str, key: dict[str, Any]) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", f"{key['name']}-{key['replicaType']}".lower()).strip("-")[:40]
    return f"{pool}-{slug}-{key['index']}-{hashlib.sha256(key['uid'].encode()).hexdigest()[:8]}"


class Reservations:
    def __init__(self, cluster: ClusterStore) -> None:
        self.cluster = cluster

    def address_for(self, pool_name: str, pool: IPPoolSpec, pod: PodRef) -> str | None:
        from ipam.cluster import api_failure

        api = self.cluster.api
        try:
            key = owner_key(api.get_pod(pod.namespace, pod.name))
        except ApiError as exc:
            if exc.status == 404:
                return None  # not a pod the API server knows: no owner, no fixed IP
            raise api_failure(exc, f"cannot read pod {pod.key} for its fixed IP") from None
        if key is None:
            return None
        name = reservation_name(pool_name, key)
        try:
            try:
                return str(api.get_reservation(pod.namespace, name)["spec"]["address"])
            except ApiError as exc:
                if exc.status != 404:
                    raise
            return self._reserve(pool_name, pool, pod.namespace, name, key)
        except ApiError as exc:
            raise api_failure(exc, f"fixed IP of {pod.key} in pool {pool_name!r}") from None

    def _reserve(self, pool_name: str, pool: IPPoolSpec, namespace: str, name: str, key: dict[str, Any]) -> str:
        api = self.cluster.api
        taken = {b["spec"]["cidr"].split("/")[0] for b in api.list_blocks(f"{POOL_LABEL}={pool_name}")
                 if b["spec"].get("reservation")}
        for ip in addrset.fixed(pool):
            address = str(ip)
            if address in taken:
                continue
            cidr = f"{address}/{ip.version == 4 and 32 or 128}"
            claim = {"apiVersion": f"{GROUP}/{VERSION}", "kind": BLOCK_KIND,
                     "metadata": {"name": block_name(pool_name, cidr), "labels": {POOL_LABEL: pool_name}},
                     "spec": {"pool": pool_name, "cidr": cidr, "node": "", "reservation": f"{namespace}/{name}"}}
            try:
                api.create_block(claim)
            except ApiError as exc:
                if exc.status == 409:
                    continue  # another owner got it first
                raise
            owner = {"apiVersion": key["apiVersion"], "kind": key["kind"], "name": key["name"], "uid": key["uid"],
                     "blockOwnerDeletion": False}
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": RESERVATION_KIND,
                    "metadata": {"name": name, "namespace": namespace, "ownerReferences": [owner],
                                 "labels": {POOL_LABEL: pool_name}},
                    "spec": {"pool": pool_name, "address": address,
                             "owner": {k: key[k] for k in ("kind", "name", "uid", "replicaType", "index")}}}
            try:
                api.create_reservation(namespace, body)
            except ApiError as exc:
                api.delete_block(block_name(pool_name, cidr))
                if exc.status == 409:  # the same replica raced on another node: theirs stands
                    return str(api.get_reservation(namespace, name)["spec"]["address"])
                raise
            return address
        raise CniError(POOL_FULL, f"IP pool {pool_name!r} has no free fixed IP",
                       f"all {addrset.fixed(pool).size} addresses of spec.fixedRanges are reserved; widen them")
