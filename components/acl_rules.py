"""Which of a user's ACL rules reach the servers' admin or dangerous commands.

The commands are the union of `ACL CAT admin` and `ACL CAT dangerous` on Redis 8.0.6 and
Valkey 9.1.2 (the engines in .engines/, asked on 2026-12-07): CONFIG, ACL, DEBUG, SHUTDOWN,
MODULE, CLUSTER's changing subcommands, FLUSHALL, KEYS, MIGRATE and the rest. The
categories are every one that holds at least one of them on either engine: `+@write` grants
FLUSHALL and `+@read` KEYS, so a user given a broad category needs a later `-@dangerous`
(the README's example does this) or the stack's explicit opt-in.
"""

from __future__ import annotations

from typing import Optional, Sequence

# Categories that grant an admin or dangerous command.
DANGEROUS_CATEGORIES = frozenset(
    {
        "all",
        "admin",
        "dangerous",
        "keyspace",
        "read",
        "write",
        "set",
        "sortedset",
        "list",
        "hyperloglog",
        "fast",
        "slow",
        "connection",
    }
)
# Commands that are admin or dangerous as a whole (every subcommand, or no subcommands).
DANGEROUS_COMMANDS = frozenset(
    {
        "acl",
        "bgrewriteaof",
        "bgsave",
        "config",
        "debug",
        "failover",
        "flushall",
        "flushdb",
        "info",
        "keys",
        "lastsave",
        "migrate",
        "module",
        "monitor",
        "pfdebug",
        "pfselftest",
        "psync",
        "replconf",
        "replicaof",
        "restore",
        "restore-asking",
        "role",
        "save",
        "shutdown",
        "slaveof",
        "sort",
        "sort_ro",
        "swapdb",
        "sync",
        # Only some of their subcommands are; `+cluster` grants all of them.
        "client",
        "cluster",
        "commandlog",
        "latency",
        "slowlog",
    }
)
# The safe subcommands of the commands above (a rule `+cluster|info` reaches nothing dangerous).
SAFE_SUBCOMMANDS = frozenset(
    {
        "client|getname",
        "client|id",
        "client|info",
        "client|setname",
        "client|setinfo",
        "client|reply",
        "client|tracking",
        "client|trackinginfo",
        "client|getredir",
        "client|caching",
        "client|no-touch",
        "cluster|info",
        "cluster|nodes",
        "cluster|shards",
        "cluster|slots",
        "cluster|myid",
        "cluster|myshardid",
        "cluster|keyslot",
        "cluster|countkeysinslot",
        "cluster|getkeysinslot",
        "cluster|links",
    }
)


def dangerous_grant(rules: Sequence[str]) -> Optional[str]:
    """The rule that leaves the user able to run an admin or dangerous command, or None.

    Rules apply in order: `-@dangerous` (or `-@all`) after a broad grant takes those
    commands away again."""
    granted: Optional[str] = None
    for rule in rules:
        sign, body = rule[:1], rule[1:].lower()
        if sign == "-" and body in ("@dangerous", "@all"):
            granted = None
        elif sign == "+" and body.startswith("@") and body[1:] in DANGEROUS_CATEGORIES:
            granted = rule
        elif sign == "+" and not body.startswith("@"):
            command = body.partition("|")[0]
            if command in DANGEROUS_COMMANDS and body not in SAFE_SUBCOMMANDS:
                granted = rule
    return granted
