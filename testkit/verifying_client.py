"""`python -m testkit.verifying_client`: a client of a TLS cluster that verifies every server's
certificate against the name it dials, as an application would, in a process of its own.

The nodes announce DNS names that nothing on this machine resolves; the test starts this
process with `sandbox.name_resolution.resolving_environment` (nss_wrapper and a hosts file),
so that redis-py resolves those names, follows MOVED to them and checks each certificate
against them (`ssl_check_hostname`), with no stand-in in the client itself.

Input: one JSON object on stdin, `{"ca_file": <path or null>, "port": 6379, "checks": [...]}`,
the password in the environment (VERIFYING_CLIENT_PASSWORD), never in argv. Output: one JSON
object on stdout, a result per check. Checks:

- `{"check": "connect", "host": <name or IP>}`: one connection, PING; `ok`, or the `error`.
- `{"check": "moved", "host": <name>, "key": <key served elsewhere>}`: SET on `host`, which
  answers MOVED; the client dials the node the redirect names and SETs there.
- `{"check": "cluster", "host": <name>, "keys": <n>}`: a RedisCluster seeded with `host`
  writes and reads back `n` keys; which node served each; CLUSTER SHARDS and CLUSTER SLOTS
  as it sees them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import MovedError, RedisClusterException
from redis.retry import Retry

PASSWORD_VARIABLE = "VERIFYING_CLIENT_PASSWORD"


def _tls(ca_file: Optional[str]) -> dict[str, Any]:
    # ssl_ca_certs None: the system's default trust store, which does not hold the cluster CA.
    return {"ssl": True, "ssl_ca_certs": ca_file, "ssl_cert_reqs": "required", "ssl_check_hostname": True}


def _node(host: str, port: int, ca_file: Optional[str], password: str) -> redis.Redis:
    # No retries: a refusal is the answer, at once.
    return redis.Redis(
        host=host, port=port, password=password, socket_timeout=5, retry=Retry(NoBackoff(), 0), **_tls(ca_file)
    )


def _error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _connect(host: str, port: int, ca_file: Optional[str], password: str) -> dict[str, Any]:
    client = _node(host, port, ca_file, password)
    try:
        return {"ok": client.ping() is True}
    except (redis.RedisError, OSError) as error:
        return {"ok": False, "error": _error(error)}
    finally:
        client.close()


def _moved(host: str, key: str, port: int, ca_file: Optional[str], password: str) -> dict[str, Any]:
    first = _node(host, port, ca_file, password)
    try:
        first.set(key, "via-moved")
        return {"ok": False, "error": f"{host} took {key} itself: no MOVED"}
    except MovedError as moved:
        target = _node(moved.host, moved.port, ca_file, password)
        try:
            return {"ok": target.set(key, "via-moved") is True, "redirected_to": moved.host}
        except (redis.RedisError, OSError) as error:
            return {"ok": False, "redirected_to": moved.host, "error": _error(error)}
        finally:
            target.close()
    except (redis.RedisError, OSError) as error:
        return {"ok": False, "error": _error(error)}
    finally:
        first.close()


def _cluster(host: str, keys: int, port: int, ca_file: Optional[str], password: str) -> dict[str, Any]:
    try:
        client = RedisCluster(host=host, port=port, password=password, decode_responses=True, **_tls(ca_file))
    except (redis.RedisError, RedisClusterException, OSError) as error:
        return {"ok": False, "error": _error(error)}
    try:
        served_by: dict[str, int] = {}
        for n in range(keys):
            key = f"verified:{n}"
            client.set(key, str(n))
            node = client.get_node_from_key(key)
            served_by[node.host] = served_by.get(node.host, 0) + 1
        read_back = all(client.get(f"verified:{n}") == str(n) for n in range(keys))
        shards = client.execute_command("CLUSTER SHARDS", target_nodes=RedisCluster.RANDOM)
        slots = client.execute_command("CLUSTER", "SLOTS", target_nodes=RedisCluster.RANDOM)
        return {
            "ok": read_back,
            "served_by": served_by,
            "nodes": sorted(node.name for node in client.get_nodes()),
            "shard_endpoints": sorted(
                {(node["endpoint"], node.get("hostname"), node["ip"]) for shard in shards for node in shard["nodes"]}
            ),
            "slot_endpoints": sorted({str(entry[2][0]) for entry in slots}),
        }
    except (redis.RedisError, RedisClusterException, OSError) as error:
        return {"ok": False, "error": _error(error)}
    finally:
        client.close()


def run(request: dict[str, Any], password: str) -> list[dict[str, Any]]:
    ca_file, port = request.get("ca_file"), int(request.get("port", 6379))
    results = []
    for check in request["checks"]:
        kind = check["check"]
        if kind == "connect":
            results.append(_connect(check["host"], port, ca_file, password))
        elif kind == "moved":
            results.append(_moved(check["host"], check["key"], port, ca_file, password))
        elif kind == "cluster":
            results.append(_cluster(check["host"], int(check["keys"]), port, ca_file, password))
        else:
            raise ValueError(f"unknown check {kind!r}")
    return results


def main() -> int:
    request = json.loads(sys.stdin.read())
    json.dump(run(request, os.environ[PASSWORD_VARIABLE]), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
