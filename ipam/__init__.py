"""railnet's IP address management: a pure allocator, pool schemas (host-local config, IPPool),
named pool files, the SQLite store and the CNI IPAM commands. Depends only on `cni.spec`."""
