"""`python -m sandbox`, the README's first command, as a user runs it: one process per command."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sandbox.processes import alive
from testkit.sandbox_support import run_sandbox_cli
from tools.render_manifests import PROJECT_DIR

pytestmark = pytest.mark.integration
THIRD_OCTET = 61
# The command line's behaviour, whatever the engine, is checked in one engine's pass
# (tests/conftest.py, engine_pass); forming, TLS and the printed lines in both.
REDIS_PASS, VALKEY_PASS = pytest.mark.engine_pass("redis"), pytest.mark.engine_pass("valkey")


def sandbox(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_sandbox_cli(root, THIRD_OCTET, *args, check=check)


def state_version_lines(stdout: str) -> set[str]:
    """The version column of the printed status table."""
    lines = stdout.splitlines()
    header = next(line for line in lines if line.startswith("pod "))
    column = header.index("version")
    return {line[column:].split()[0] for line in lines if line.startswith("redis-cluster-")}


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "sandbox"
    yield root
    # Whatever happened, no process of this test outlives it.
    sandbox(root, "down", "--purge", check=False)


def test_up_forms_a_cluster_from_the_stack_files_and_records_it(root, engine):
    result = sandbox(root, "up", "--engine", engine.engine.name)
    assert "cluster ok: 6 nodes" in result.stdout
    # Which engine and release the pods run, as the user reads it.
    assert f"engine: {engine.describe()}" in result.stdout
    assert state_version_lines(result.stdout) == {".".join(map(str, engine.version))}
    state = json.loads((root / "cluster.json").read_text())
    assert oct((root / "cluster.json").stat().st_mode & 0o777) == "0o600"
    nodes = state["nodes"]
    assert [n["pod"] for n in nodes] == [f"redis-cluster-{i}" for i in range(6)]
    assert len({n["host"] for n in nodes}) == 6
    assert all(n["host"].startswith(f"127.0.{THIRD_OCTET}.") and n["port"] == 6379 for n in nodes)
    assert sorted(n["role"] for n in nodes) == ["master"] * 3 + ["slave"] * 3
    assert all(alive(n["pid"]) and Path(n["data_dir"]).is_dir() for n in nodes)
    # The printed connection line works as printed.
    assert state["password"] in result.stdout
    client = redis.RedisCluster(host=nodes[0]["host"], port=6379, password=state["password"])
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"
    client.close()
    # The very files the workload renders: the password only in the secret dir.
    conf = Path(nodes[0]["data_dir"]).parent / "conf"
    assert state["password"] not in (conf / "redis.conf").read_text()
    assert (conf / "entrypoint.sh").read_text() == (PROJECT_DIR / "components/scripts/entrypoint.sh").read_text()


def test_a_refused_shape_changes_nothing(root, engine):
    refused = sandbox(root, "up", "--engine", engine.engine.name, "--shards", "2", check=False)
    assert refused.returncode != 0 and "shards" in refused.stderr
    assert not (root / "cluster.json").exists(), "a refused command leaves no state behind"
    # So nothing stands in the way of the next command.
    status = sandbox(root, "status", check=False)
    assert "shards" not in status.stderr


@VALKEY_PASS
def test_status_kill_and_down_work_on_the_recorded_pids(root, engine):
    sandbox(root, "up", "--engine", engine.engine.name)
    pids = [n["pid"] for n in json.loads((root / "cluster.json").read_text())["nodes"]]
    sandbox(root, "kill", "redis-cluster-4")
    assert not alive(pids[4])
    rows = json.loads(sandbox(root, "status", "--json").stdout)
    assert [r["state"] for r in rows] == ["up"] * 4 + ["down"] + ["up"]
    assert sum(r["keys"] for r in rows if r["state"] == "up") == 0
    sandbox(root, "down")
    assert not any(alive(pid) for pid in pids)
    assert (root / "nodes" / "redis-cluster-0" / "data").is_dir(), "down keeps the data"
    sandbox(root, "down", "--purge")
    assert not root.exists()


@REDIS_PASS
def test_an_unknown_pod_gets_a_clear_error(root, engine):
    sandbox(root, "up", "--engine", engine.engine.name)
    unknown = sandbox(root, "kill", "redis-cluster-9", check=False)
    assert unknown.returncode == 1 and "no pod 'redis-cluster-9'" in unknown.stderr


def test_commands_without_a_sandbox_say_how_to_start_one(root):
    result = sandbox(root, "status", check=False)
    assert result.returncode == 1
    assert "python -m sandbox up" in result.stderr


def test_up_with_tls_prints_lines_that_verify_and_renews_the_certificate_in_place(root, engine):
    result = sandbox(root, "up", "--engine", engine.engine.name, "--tls")
    assert "cluster ok: 6 nodes" in result.stdout
    assert "tls: on" in result.stdout
    state = json.loads((root / "cluster.json").read_text())
    assert state["tls"] is True and state["tls_ca_file"] == str(root.resolve() / "tls" / "ca.crt")
    assert oct((root / "ca" / "ca.key").stat().st_mode & 0o777) == "0o600"
    nodes = state["nodes"]
    # Nothing answers in plaintext.
    plaintext = redis.Redis(host=nodes[0]["host"], port=6379, password=state["password"], retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        plaintext.ping()
    plaintext.close()

    # The printed CLI line works as printed: by the first pod's DNS name, following redirects
    # to the others' names (the sandbox's hosts file), the chain verified.
    line = next(line.strip() for line in result.stdout.splitlines() if " -c --tls --cacert " in line)
    assert "--insecure" not in line and "redis-cluster-0.redis-cluster-headless.redis.svc.cluster.local" in line
    for n in range(12):
        written = subprocess.run(["sh", "-c", f"{line} SET key{n} {n}"], capture_output=True, text=True, timeout=30)
        assert written.stdout.strip() == "OK", written
    rows = json.loads(sandbox(root, "status", "--json").stdout)
    assert [row["announced"] for row in rows] == [
        f"redis-cluster-{i}.redis-cluster-headless.redis.svc.cluster.local" for i in range(6)
    ]
    assert sum(1 for row in rows if row["role"] == "master" and row["keys"] > 0) == 3

    before = sandbox(root, "status").stdout.splitlines()[0]
    renewed = sandbox(root, "renew-cert")
    assert renewed.stdout.count(": reloaded; new connections get serial") == 6, renewed.stdout
    after = renewed.stdout.splitlines()[0]
    assert after.startswith("tls: on") and after != before, (before, after)
    again = json.loads((root / "cluster.json").read_text())
    assert [n["pid"] for n in again["nodes"]] == [n["pid"] for n in nodes], "renewal restarts no pod"
    read = subprocess.run(["sh", "-c", f"{line} GET key11"], capture_output=True, text=True, timeout=30)
    assert read.stdout.strip() == "11", read


@REDIS_PASS
def test_a_pod_that_cannot_start_is_an_error_line_not_a_traceback(root, engine):
    sandbox(root, "up", "--engine", engine.engine.name)
    state = json.loads((root / "cluster.json").read_text())
    sandbox(root, "down")
    # The first pod's append-only directory is a file now: its server exits at start.
    aof = Path(state["nodes"][0]["data_dir"]) / "appendonlydir"
    shutil.rmtree(aof)
    aof.write_text("not a directory")
    result = sandbox(root, "up", "--timeout", "20", check=False)
    assert result.returncode == 1, result
    assert result.stderr.startswith("error:") and "redis-cluster-0" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@VALKEY_PASS
def test_kill_brings_the_pod_back_after_a_back_off_unless_told_to_stay_down(root, engine):
    sandbox(root, "up", "--engine", engine.engine.name)
    killed = sandbox(root, "kill", "redis-cluster-3")
    assert "starts again in 10s" in killed.stdout
    first_pid = json.loads((root / "cluster.json").read_text())["nodes"][3]["pid"]
    assert first_pid is None
    deadline = time.monotonic() + 60
    while not (pid := json.loads((root / "cluster.json").read_text())["nodes"][3]["pid"]):
        assert time.monotonic() < deadline, "the kubelet never restarted the pod"
        time.sleep(0.5)
    assert alive(pid)
    stayed = sandbox(root, "kill", "redis-cluster-4", "--stay-down")
    assert "it stays down" in stayed.stdout
    # A down after a kill takes the pending restart back: its waiting process is stopped, and
    # nothing starts once everything stopped.
    sandbox(root, "kill", "redis-cluster-5")
    waiting = json.loads((root / "cluster.json").read_text())["nodes"][5]["restart_pid"]
    assert alive(waiting)
    sandbox(root, "down")
    assert not alive(waiting)
    assert not any(n["pid"] for n in json.loads((root / "cluster.json").read_text())["nodes"])


@REDIS_PASS
def test_restart_with_a_lost_volume_rejoins_by_itself(root, engine):
    sandbox(root, "up", "--engine", engine.engine.name)
    before = json.loads(sandbox(root, "status", "--json").stdout)
    old_id = before[1]["id"]
    after = sandbox(root, "restart", "redis-cluster-1", "--lose-volume")
    rows = json.loads(sandbox(root, "status", "--json").stdout)
    assert rows[1]["id"] != old_id and rows[1]["state"] == "up" and rows[1]["cluster_state"] == "ok", after.stdout
    assert all(old_id not in json.dumps(row) for row in rows)
    (lost,) = (root / "lost-volumes").iterdir()
    assert lost.name.startswith("redis-cluster-1-") and (lost / "nodes.conf").exists()
