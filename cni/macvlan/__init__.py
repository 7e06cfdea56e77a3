"""railnet-macvlan: a macvlan on a RoCE NIC, created directly in the pod's network namespace."""
