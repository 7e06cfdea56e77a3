"""railnet's DRA driver `rdma.railnet.io`: the node agent publishes its RDMA NICs as a ResourceSlice
(slices.py), serves the kubelet's DRAPlugin v1 gRPC service through the plugin watcher (driver.py),
and prepares a claim's NICs by writing a CDI spec for their RDMA character devices (cdi.py) with
the claim's state on disk (state.py, prepare.py), so an agent restart loses nothing."""

DRIVER = "rdma.railnet.io"
