"""railnet's CNI side. Layers, each importing only those above it:

- `cni.spec`: the CNI specification (request, versions and results, errors, wire format, conflists,
  exec of delegate plugins, the base model, rollback);
- `cni.linux`: namespaces, rtnetlink, interface configuration, the NIC resolver;
- `cni.macvlan` (and the coming meta and SR-IOV plugins): one package per plugin;
- `cni.dispatch`, `cni.attachments`, `cni.ipam_calls`: what the agent serves;
- `cni.shim`, `cni/native/shim.c`, `cni.install`: the exec'd binary and its installer.
"""
