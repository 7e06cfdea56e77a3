"""The `railnet` meta plugin (Multus-compatible): the pod's primary network through the cluster's
own CNI, then the secondary networks the pod asks for with `k8s.v1.cni.cncf.io/networks`.

Built so far: the user-facing contract as pure functions (selection parsing, NAD resolution,
network-status). The delegation flow and the agent's pod/NAD caches are not built yet.
"""
