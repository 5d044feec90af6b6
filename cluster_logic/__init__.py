"""The Redis Cluster logic: plan, form, adopt, repair, scale out and observe a cluster of
Redis nodes through a transport; no Pulumi in here (the provider in
`components.cluster_bootstrap` is the one seam to the engine).

Safety rules that hold everywhere in this package:
* a node that holds keys or knows nodes outside our set is never reset, flushed or joined;
* keys only move with MIGRATE (atomic per key) and REPLACE is used only for keys whose
  serialized value is byte-identical on both sides;
* no error message carries the password.

The entry points are `reconcile.ensure_cluster` and `reconcile.read_topology`.
"""
