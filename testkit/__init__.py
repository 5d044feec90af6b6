"""Shared support for the tests and the benchmarks, one module per concern.

`redis_nodes`: local Redis nodes (the sandbox's launcher) on locked loopback addresses, and
reading their cluster. `writers`: the writer that records acknowledged writes, bulk loads
and the lost-key check. `sandbox_support`: the sandbox as the reliability suite and its
benchmark drive it. `processes`: finding what a test left running (process control itself
is `sandbox.processes`). `provider_server`: the dynamic providers served over gRPC.
`fake_transport`, `fake_views`: clusters made of canned replies, for unit tests. The Pulumi
mock harness is `tools.render_manifests.run_program`.
"""
