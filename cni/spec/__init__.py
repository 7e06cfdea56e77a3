"""The CNI spec layer: the request, versions and results, errors, the shim wire format, and how a
runtime runs plugins (conflists, exec of delegates). Nothing here touches the kernel or the IPAM."""
