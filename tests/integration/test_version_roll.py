"""A version change within an engine, rolled as the StatefulSet rolls a new image: Redis 7.0
(bookworm's, the older release this machine has) to the Redis the stack tests (8.0, from
.engines/), one pod at a time through preStop and the readiness probe, under a writer.
Rolling back to the older line is refused before any pod stops, as the stack's guard
refuses it at preview.

Runs in the suite's redis pass (`--engine redis`); Valkey has no second release here.
127.0.62.0/24 (the sandbox CLI tests use 60 and 61); every process is stopped by pid.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from components.engines import REDIS, format_version
from sandbox.engine_binaries import EngineBinaries, EngineNotFound, find_binaries
from sandbox.local_cluster import Sandbox, SandboxError
from sandbox.processes import is_server
from testkit.sandbox_support import ManagedSandbox, cluster_client, snapshot, wait_healthy
from testkit.writers import Writer, lost_keys, write_keys

pytestmark = pytest.mark.integration

ROLL_OCTET = 62
# bookworm's redis-server, installed by tools/install-system-packages.sh.
OLDER_REDIS = Path("/usr/bin")


def _versions(sandbox: Sandbox) -> set[str]:
    return {str(row.get("version")) for row in sandbox.status()}


def test_a_version_roll_keeps_every_write_and_rolling_back_is_refused(tmp_path: Path, engine: EngineBinaries) -> None:
    if engine.engine != REDIS:
        pytest.skip("the roll runs Redis 7.0 -> 8.0 in the redis pass; Valkey has one release here")
    older = EngineBinaries(REDIS, OLDER_REDIS)
    try:
        older_version = older.version
    except (EngineNotFound, OSError) as error:
        pytest.fail(f"bookworm's redis-server is missing ({error}): run tools/install-system-packages.sh")
    newer = find_binaries(REDIS)
    if older_version[:2] >= newer.version[:2]:
        pytest.skip(f"{older.describe()} is no older line than {newer.describe()} on this machine")

    managed = ManagedSandbox(
        tmp_path / "sandbox", ROLL_OCTET, sandbox=Sandbox(tmp_path / "sandbox", third_octet=ROLL_OCTET, binaries=older)
    )
    try:
        sb = managed.sandbox
        assert sb.up()["state"] == "ok"
        assert _versions(sb) == {format_version(older_version)}
        client = cluster_client(sb)
        kept = write_keys(client, "before-roll", 2000)
        before = snapshot(sb)

        with Writer(cluster_client(sb), "roll") as writer:
            writer.wait_acknowledged(50)
            sb.roll(newer)
            # And the writes go on once every pod runs the new release.
            writer.wait_acknowledged(50, after=time.monotonic())
        print(writer.summary(), f"longest write: {writer.slowest_success():.3f}s", sep="\n")

        wait_healthy(sb)
        assert _versions(sb) == {format_version(newer.version)}
        after = snapshot(sb)
        assert all(after[pod].run_id != before[pod].run_id for pod in before), "not every pod restarted"
        assert {pod: facts.id for pod, facts in after.items()} == {pod: facts.id for pod, facts in before.items()}
        assert not writer.failures(), writer.summary()
        assert lost_keys(client, kept) == []
        assert lost_keys(client, writer.acknowledged()) == []

        # Back to the older line: refused, and not one pod stopped for it.
        pids = {record.pod: record.pid for record in sb.load().nodes}
        with pytest.raises(SandboxError) as refused:
            sb.roll(older)
        assert "cannot roll back" in str(refused.value) and format_version(older_version) in str(refused.value)
        assert {record.pod: record.pid for record in sb.load().nodes} == pids
        assert all(is_server(pid) for pid in pids.values())
        client.close()
    finally:
        problems = managed.close()
    assert not problems, problems
