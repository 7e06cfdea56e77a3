"""The `railnet` meta plugin (Multus-compatible): the pod's primary network through the cluster's
own CNI, then the secondary networks the pod asks for with `k8s.v1.cni.cncf.io/networks`.

Modules: `selection` (the networks annotation), `nad` (NAD -> delegate conflist), `status`
(network-status), `plugin` (ADD/DEL/CHECK/GC/STATUS over delegates), `kube` (direct GETs and the
status patch), `cache` (the agent's pod and NAD watch caches, GET on a miss), `netconf` (the
node's `00-railnet.conflist`).
"""
