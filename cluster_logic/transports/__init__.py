"""How the cluster logic reaches the Redis nodes: `direct` (host:port from here) and
`kubernetes` (the API's port-forward and exec), behind the `base.NodeTransport` interface."""
