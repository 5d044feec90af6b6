"""Who may log in to the nodes, and how a change of passwords or users reaches running
nodes without a pod restart or a refused client.

The nodes read their users from an ACL file (`render_acl_file`) when they start; a running
node learns a change through `ACL SETUSER`/`ACL DELUSER` and `CONFIG SET masterauth`. A
rotation is two passes over every node (`converge_credentials`):

- admit: every wanted user exists with its wanted rules and passwords, *added* to the ones
  it has, and replicas authenticate to their master with the new replication password
  (every node accepts it now). Old and new passwords both work.
- retire: the passwords and the users no longer wanted are removed. Only the new work.

Between the two, the Secret that restarting pods read is updated to the new passwords, and
clients switch. The decisions are pure functions over a node's parsed `ACL LIST`
(`admit_commands`, `retire_commands`, `pending_changes`), beside the one that runs them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import redis

from cluster_logic.commands import short_error
from cluster_logic.model import NodeAddress
from cluster_logic.transports.base import NodeTransport, close_client

log = logging.getLogger(__name__)

ADMIN_USER = "default"
# Replicas authenticate to their master as this user, which may only replicate: the
# password on every pod's disk for that purpose opens nothing else.
REPLICATION_USER = "replication"
# The metrics exporter beside each node logs in as this user, which may read the server's
# state and nothing else: no key, no channel, no CONFIG GET (that would show masterauth).
MONITORING_USER = "monitoring"
RESERVED_USERS = (ADMIN_USER, REPLICATION_USER, MONITORING_USER)
ADMIN_RULES = ("~*", "&*", "+@all")
# What a replica runs on its master's connection: AUTH, PING, REPLCONF, PSYNC (and SYNC
# from older replicas).
REPLICATION_RULES = ("-@all", "+psync", "+sync", "+replconf", "+ping")
# Exactly what redis_exporter 1.86 runs against its node when started with
# `--config-command=-`, as the ACL LOG of Redis 8.0 and Valkey 9.1 shows it for a user allowed
# nothing: CLIENT SETNAME on connecting, INFO, CLUSTER INFO, the latency reports and the slow
# log. Each denied one would lose its metrics and add an ACL LOG entry at every scrape
# (tests/integration/test_exporter.py checks there is none). The slow log shows the first
# arguments of slow commands (passwords redacted), the price of its metrics. PING is for a
# person checking the login by hand.
MONITORING_RULES = (
    "-@all",
    "+ping",
    "+client|setname",
    "+info",
    "+cluster|info",
    "+latency|latest",
    "+latency|histogram",
    "+slowlog|get",
    "+slowlog|len",
    # components/alerts/cluster-view.lua, run read-only: a script runs under the user's own
    # rights, so it can read CLUSTER NODES and nothing else.
    "+eval_ro",
    "+cluster|nodes",
)
USER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# One ACL rule a user's settings may grant: a command or category, allowed (+) or denied (-),
# optionally a subcommand (+config|get).
COMMAND_RULE = re.compile(r"^[+-]@?[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)?$")
# A key or channel pattern: glob characters allowed, nothing that would end the rule.
PATTERN = re.compile(r"^[^\s\"'#<>!%~&]{1,200}$")


def password_hash(password: str) -> str:
    """What an ACL file holds instead of a password: its SHA-256, as `ACL LIST` shows it."""
    return hashlib.sha256(password.encode()).hexdigest()


def replication_password(admin_password: str) -> str:
    """The replication user's password, derived from the admin password: rotating one
    rotates the other, and no second secret has to be kept."""
    return hmac.new(admin_password.encode(), b"redis-eks replication user", hashlib.sha256).hexdigest()


def monitoring_password(admin_password: str) -> str:
    """The monitoring user's password, derived from the admin password like the replication
    user's: it rotates with it."""
    return hmac.new(admin_password.encode(), b"redis-eks monitoring user", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class UserAccess:
    """A named user of the `users` setting: what it may run and touch (no password here)."""

    name: str
    commands: tuple[str, ...]
    keys: tuple[str, ...] = ()
    read_keys: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()

    @property
    def rules(self) -> tuple[str, ...]:
        return (
            *(f"~{pattern}" for pattern in self.keys),
            *(f"%R~{pattern}" for pattern in self.read_keys),
            *(f"&{pattern}" for pattern in self.channels),
            "-@all",
            *self.commands,
        )


@dataclass(frozen=True)
class Credential:
    """One user as the nodes should hold it: its rules and every password it may use."""

    name: str
    passwords: tuple[str, ...]
    rules: tuple[str, ...]

    def __repr__(self) -> str:  # never print a password
        return f"Credential({self.name!r}, {len(self.passwords)} password(s), {' '.join(self.rules)!r})"

    @property
    def hashes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(password_hash(p) for p in self.passwords))


def wanted_credentials(
    admin_password: str,
    users: Sequence[UserAccess] = (),
    user_passwords: Optional[Mapping[str, str]] = None,
    replication_rules: Sequence[str] = REPLICATION_RULES,
) -> list[Credential]:
    """Every user the nodes should have: the admin (`default`), the replication user, the
    monitoring user and the named ones, each with its one current password."""
    passwords = dict(user_passwords or {})
    missing = [user.name for user in users if not passwords.get(user.name)]
    if missing:
        raise ValueError("no password for user(s) " + ", ".join(missing))
    return [
        Credential(ADMIN_USER, (admin_password,), ADMIN_RULES),
        Credential(REPLICATION_USER, (replication_password(admin_password),), tuple(replication_rules)),
        Credential(MONITORING_USER, (monitoring_password(admin_password),), MONITORING_RULES),
        *(Credential(user.name, (passwords[user.name],), user.rules) for user in users),
    ]


def render_acl_file(credentials: Sequence[Credential]) -> str:
    """The ACL file a node loads at start (`aclfile`): hashes only, never a password."""
    lines = []
    for credential in credentials:
        _check_credential(credential)
        hashes = " ".join(f"#{h}" for h in credential.hashes)
        lines.append(f"user {credential.name} on {hashes} {' '.join(credential.rules)}")
    return "\n".join(lines) + "\n"


def render_masterauth(admin_password: str) -> str:
    """auth.conf: how a replica logs in to its master."""
    return f"masteruser {REPLICATION_USER}\nmasterauth {replication_password(admin_password)}\n"


def _check_credential(credential: Credential) -> None:
    if credential.name not in RESERVED_USERS and not USER_NAME.match(credential.name):
        raise ValueError(f"user name {credential.name!r} is not allowed")
    if not credential.passwords:
        raise ValueError(f"user {credential.name} has no password")


# ---------------------------------------------------------------------------------------
# What a node holds, and what to tell it.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeUser:
    """One line of `ACL LIST`, as much of it as the rotation judges."""

    name: str
    enabled: bool
    hashes: frozenset[str]
    nopass: bool = False


def parse_acl_list(lines: Iterable[str | bytes]) -> dict[str, NodeUser]:
    """`ACL LIST` of a node: user name -> its state."""
    users = {}
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        words = line.split()
        if len(words) < 2 or words[0] != "user":
            continue
        users[words[1]] = NodeUser(
            name=words[1],
            enabled="on" in words[2:],
            hashes=frozenset(w[1:] for w in words[2:] if w.startswith("#")),
            nopass="nopass" in words[2:],
        )
    return users


def admit_commands(current: Mapping[str, NodeUser], wanted: Sequence[Credential]) -> list[list[str]]:
    """ACL SETUSER commands that give every wanted user its rules and its wanted passwords,
    keeping the ones it has: a client logged in with an old password goes on working."""
    commands = []
    for credential in wanted:
        node_user = current.get(credential.name)
        have = node_user.hashes if node_user else frozenset()
        # A password-less default (a fresh node, before its ACL file) must not stay open.
        reset = ["resetpass"] if node_user is not None and node_user.nopass else []
        commands.append(
            [
                "ACL",
                "SETUSER",
                credential.name,
                "on",
                *reset,
                *(f"#{h}" for h in credential.hashes if h not in have or reset),
                # Rules are set whole every time: a narrowed user is narrowed at once.
                "resetkeys",
                "resetchannels",
                "-@all",
                *credential.rules,
            ]
        )
    return commands


def retire_commands(current: Mapping[str, NodeUser], wanted: Sequence[Credential]) -> list[list[str]]:
    """What removes the passwords and users no longer wanted, once every node has the new ones."""
    wanted_hashes = {credential.name: set(credential.hashes) for credential in wanted}
    commands = []
    for name, node_user in sorted(current.items()):
        if name not in wanted_hashes:
            if name != ADMIN_USER:
                commands.append(["ACL", "DELUSER", name])
            continue
        stale = sorted(node_user.hashes - wanted_hashes[name])
        if stale:
            commands.append(["ACL", "SETUSER", name, *(f"!{h}" for h in stale)])
    return commands


def pending_changes(current: Mapping[str, NodeUser], wanted: Sequence[Credential]) -> list[str]:
    """How a node differs from the wanted users, by name only (no hash is ever shown)."""
    problems = []
    for credential in wanted:
        node_user = current.get(credential.name)
        if node_user is None:
            problems.append(f"user {credential.name} missing")
        elif not node_user.enabled or node_user.nopass:
            problems.append(f"user {credential.name} {'disabled' if not node_user.enabled else 'has no password'}")
        elif not set(credential.hashes) <= node_user.hashes:
            problems.append(f"user {credential.name} lacks its current password")
        elif node_user.hashes - set(credential.hashes):
            problems.append(f"user {credential.name} still accepts a previous password")
    names = {credential.name for credential in wanted}
    problems.extend(f"user {name} should be removed" for name in sorted(set(current) - names))
    return problems


# ---------------------------------------------------------------------------------------
# Running it on the nodes.
# ---------------------------------------------------------------------------------------


@dataclass
class CredentialsReport:
    """What a pass over the nodes found: the nodes it changed, the ones it could not reach
    or log in to (by pod name), and what still differs from the wanted users."""

    changed: list[str]
    unreachable: list[str]
    pending: dict[str, list[str]]

    @property
    def complete(self) -> bool:
        return not self.unreachable and not any(self.pending.values())

    def problems(self) -> list[str]:
        found = [f"{pod}: cannot log in to update its users" for pod in self.unreachable]
        found += [f"{pod}: {problem}" for pod, problems in sorted(self.pending.items()) for problem in problems]
        return found


def converge_credentials(
    transport: NodeTransport,
    count: int,
    wanted: Sequence[Credential],
    previous_admin_passwords: Sequence[str] = (),
    retire: bool = True,
    also_accept: Sequence[Credential] = (),
) -> CredentialsReport:
    """Admits the wanted users on every running node, then, if every one of them took them
    and `retire` is set, retires what is no longer wanted.

    A node is logged in to with the wanted admin password or, failing that, a previous one
    (a node that restarted before its Secret changed knows only the old). `also_accept`
    are passwords of the wanted users that stay valid until the retire: a node that
    restarted from the new Secret gets them back for the grace period. Rules are sent every
    time (they are idempotent): a narrowed user is narrowed on the next pass."""
    admin = next(c for c in wanted if c.name == ADMIN_USER)
    replication = next(c for c in wanted if c.name == REPLICATION_USER)
    candidates = list(dict.fromkeys([*admin.passwords, *previous_admin_passwords]))
    admitting = _with_passwords_of(wanted, also_accept)
    report = CredentialsReport(changed=[], unreachable=[], pending={})
    nodes = transport.running_nodes(count)
    admitted = []
    for node in nodes:
        try:
            with _logged_in(transport, node, candidates) as client:
                current = parse_acl_list(client.execute_command("ACL", "LIST"))
                if pending_changes(current, admitting):
                    report.changed.append(node.pod)
                for command in admit_commands(current, admitting):
                    client.execute_command(*command)
                # Every node accepts the new replication password from now on; a master
                # that did not take it yet leaves its replicas' link down for one pass at
                # most: the next pass retries.
                client.execute_command("CONFIG", "SET", "masteruser", REPLICATION_USER)
                client.execute_command("CONFIG", "SET", "masterauth", replication.passwords[0])
                admitted.append(node)
        except (_NoLogin, redis.RedisError, OSError) as error:
            report.unreachable.append(node.pod)
            log.info("%s: users not updated: %s", node.pod, short_error(error))
    for node in admitted:
        try:
            with _logged_in(transport, node, candidates) as client:
                current = parse_acl_list(client.execute_command("ACL", "LIST"))
                if retire and not report.unreachable:
                    commands = retire_commands(current, wanted)
                    for command in commands:
                        client.execute_command(*command)
                    if commands:
                        report.changed.append(node.pod)
                        current = parse_acl_list(client.execute_command("ACL", "LIST"))
                report.pending[node.pod] = pending_changes(current, wanted)
        except (_NoLogin, redis.RedisError, OSError) as error:
            report.unreachable.append(node.pod)
            log.info("%s: users not updated: %s", node.pod, short_error(error))
    report.changed = sorted(set(report.changed))
    return report


def _with_passwords_of(wanted: Sequence[Credential], extra: Sequence[Credential]) -> list[Credential]:
    """`wanted`, each user also accepting its passwords in `extra` (users not wanted any
    more are not brought back)."""
    more = {c.name: c.passwords for c in extra}
    return [Credential(c.name, tuple(dict.fromkeys([*c.passwords, *more.get(c.name, ())])), c.rules) for c in wanted]


def read_credentials(transport: NodeTransport, count: int, wanted: Sequence[Credential]) -> CredentialsReport:
    """What refresh shows: how far every running node is from the wanted users."""
    admin = next(c for c in wanted if c.name == ADMIN_USER)
    report = CredentialsReport(changed=[], unreachable=[], pending={})
    for node in transport.running_nodes(count):
        try:
            with _logged_in(transport, node, list(admin.passwords)) as client:
                report.pending[node.pod] = pending_changes(
                    parse_acl_list(client.execute_command("ACL", "LIST")), wanted
                )
        except (_NoLogin, redis.RedisError, OSError):
            report.unreachable.append(node.pod)
    return report


class _NoLogin(Exception):
    """No admin password the caller knows opens this node (or it does not answer)."""


@contextmanager
def _logged_in(transport: NodeTransport, node: NodeAddress, passwords: Sequence[str]) -> Iterator[redis.Redis]:
    """A client of `node` logged in as the admin with the first password it accepts, its
    connections closed at the end (through a port-forward, each one is costly to hold)."""
    for password in passwords:
        client = transport.client_as(node, password)
        try:
            client.ping()
        except redis.AuthenticationError:
            close_client(client)
            continue
        except redis.ResponseError as error:
            close_client(client)
            if "WRONGPASS" in str(error) or "NOAUTH" in str(error):
                continue
            raise _NoLogin(short_error(error)) from None
        except (redis.RedisError, OSError) as error:
            close_client(client)
            raise _NoLogin(short_error(error)) from None
        try:
            yield client
        finally:
            close_client(client)
        return
    raise _NoLogin("no known admin password is accepted")
