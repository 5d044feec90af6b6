"""Shared support for the tests and the benchmarks: local Redis nodes, writers that record
acknowledged writes, process control, Pulumi mocks and clusters made of views."""
