"""Clients of the kubelet's local gRPC APIs (pod-resources) and the stubs generated for them."""
