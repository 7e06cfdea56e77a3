"""The scheduling core, pure and in memory: cluster model, joint GPU + NIC placement inside a node,
gangs across nodes, hierarchical elastic quota, queueing and trace replay. No API calls."""
