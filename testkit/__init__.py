"""Shared support for the tests and the benchmarks, one module per concern.

`redis_nodes`: local Redis nodes (the sandbox's launcher) on locked loopback addresses, and
reading their cluster. `writers`: the writer that records acknowledged writes, bulk loads
and the lost-key check. `sandbox_support`: the sandbox as the reliability suite and its
benchmark drive it. `processes`: finding what a test left running (process control itself
is `sandbox.processes`). `provider_server`: the dynamic providers served over gRPC.
`fake_transport`, `fake_views`: clusters made of canned replies, for unit tests.
`custom_resources`: every rendered object validated, CRD kinds against their vendored
schemas. `exporter`: the real redis_exporter beside local nodes, and its text format. The Pulumi
mock harness is `tools.render_manifests.run_program`.
"""
