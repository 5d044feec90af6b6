"""Network partitions between the sandbox's pods: nftables rules on their loopback addresses, in a table of the sandbox's own.

A partition cuts a group of pods off from the other pods on the pods' client and cluster-bus
ports (6379 and 16379), both ways: every packet between an address of the group and an
address of the rest, to or from one of those ports, is dropped where the kernel delivers it
(the `input` hook), so each side sees the other go silent, as with a cable pulled or a
security group changed, not refused. Loopback traffic between 127.0.0.0/8 addresses passes
through netfilter like any other (tests/integration/test_partitions.py checks it for real).
Clients connect from addresses that are no pod's (127.0.0.1): by default they are cut off
from the group as well; with `keep_client` they keep reaching every pod, the case of a client
on the group's side of the cut (it reaches the rest too: one client process stands for the
clients of both sides).

Everything lives in one nftables table per sandbox address range, `inet
redis_eks_sandbox_<third octet>`, whose comment names the sandbox's root: a new partition
replaces the table whole (one `nft -f` transaction, so no moment without rules nor with two
sets), and healing deletes it. No other table, chain or rule of the machine is read or
changed. The rules name addresses: a pod that moves (`restart --new-ip`) while cut off is not
followed; partition it again.

nft needs CAP_NET_ADMIN (root); Debian's `nftables` package has it
(tools/install-system-packages.sh installs it).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

FAMILY = "inet"
NFT_SEARCH_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
NFT_TIMEOUT_SECONDS = 30


class PartitionError(RuntimeError):
    """nft is missing, refused, or failed; the message says what to do."""


@dataclass(frozen=True)
class Partition:
    """`cut`: the addresses cut off; `rest`: the other pods' addresses; `ports`: the pods'
    client and bus ports; `keep_client`: whether addresses that are no pod's (clients) still
    reach the cut pods."""

    cut: tuple[str, ...]
    rest: tuple[str, ...]
    ports: tuple[int, ...]
    keep_client: bool = False

    def __post_init__(self) -> None:
        # One spelling per partition, whatever order the pods were named or nft lists them in.
        object.__setattr__(self, "cut", tuple(sorted(set(self.cut), key=ipaddress.ip_address)))
        object.__setattr__(self, "rest", tuple(sorted(set(self.rest), key=ipaddress.ip_address)))
        object.__setattr__(self, "ports", tuple(sorted(set(self.ports))))
        if not self.cut:
            raise ValueError("a partition cuts off at least one pod")
        if not self.rest:
            raise ValueError("a partition leaves at least one pod on the other side")
        if set(self.cut) & set(self.rest):
            raise ValueError(f"an address on both sides: {sorted(set(self.cut) & set(self.rest))}")
        if not self.ports:
            raise ValueError("a partition needs the pods' ports")


def table_name(third_octet: int) -> str:
    """The sandbox's own table: one per address range (127.0.<octet>.0/24), which no two
    sandboxes share."""
    if not 0 <= third_octet <= 255:
        raise ValueError(f"not an octet: {third_octet}")
    return f"redis_eks_sandbox_{third_octet}"


def ruleset(table: str, partition: Partition, comment: str) -> str:
    """The `nft -f` script that replaces `table` with the rules of `partition`: the table is
    made (if absent), deleted and made again in one transaction."""

    def elements(values: Sequence[object]) -> str:
        return ", ".join(str(value) for value in values)

    quoted = comment.replace("\\", "/").replace('"', "'")[:120]
    # With the clients kept, pod to pod only (the group and the rest); else the group and every
    # address that is not in it: the rest, and the clients.
    other = "@rest" if partition.keep_client else "!= @cut"
    return "\n".join(
        [
            f"table {FAMILY} {table}",
            f"delete table {FAMILY} {table}",
            f"table {FAMILY} {table} {{",
            f'    comment "{quoted}"',
            f"    set cut {{ type ipv4_addr; elements = {{ {elements(partition.cut)} }}; }}",
            f"    set rest {{ type ipv4_addr; elements = {{ {elements(partition.rest)} }}; }}",
            f"    set ports {{ type inet_service; elements = {{ {elements(partition.ports)} }}; }}",
            "    chain input {",
            "        type filter hook input priority filter; policy accept;",
            # Both directions, whichever side opened the connection.
            f"        ip saddr @cut ip daddr {other} tcp dport @ports drop",
            f"        ip saddr @cut ip daddr {other} tcp sport @ports drop",
            f"        ip daddr @cut ip saddr {other} tcp dport @ports drop",
            f"        ip daddr @cut ip saddr {other} tcp sport @ports drop",
            "    }",
            "}",
            "",
        ]
    )


def nft_binary() -> str:
    """The nft command (Debian puts it in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("nft") or shutil.which("nft", path=NFT_SEARCH_PATH)
    if found is None:
        raise PartitionError("nft is not installed: `sh tools/install-system-packages.sh` (Debian's nftables)")
    return found


def _nft(*args: str, script: Optional[str] = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [nft_binary(), *args],
            input=script,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise PartitionError(f"nft {' '.join(args)} did not finish in {NFT_TIMEOUT_SECONDS}s") from None


def _failed(what: str, done: subprocess.CompletedProcess) -> PartitionError:
    detail = (done.stderr or done.stdout).strip()
    hint = " (nft needs root: CAP_NET_ADMIN)" if "Operation not permitted" in detail else ""
    return PartitionError(f"{what} failed{hint}: {detail}")


def cut(third_octet: int, partition: Partition, root: Path) -> None:
    """Replaces the sandbox's partition (if any) with `partition`."""
    table = table_name(third_octet)
    done = _nft("-f", "-", script=ruleset(table, partition, f"redis-eks sandbox {Path(root).resolve()}"))
    if done.returncode != 0:
        raise _failed(f"nft rules for table {FAMILY} {table}", done)


def _listing(third_octet: int, *options: str) -> Optional[str]:
    try:
        nft_binary()
    except PartitionError:
        return None
    done = _nft(*options, "list", "table", FAMILY, table_name(third_octet))
    if done.returncode != 0:
        # No table; or no right to netfilter at all (not root, a container without
        # NET_ADMIN), and then no rule can have been added either: `down` goes on.
        if "No such file or directory" in done.stderr or "Operation not permitted" in done.stderr:
            return None
        raise _failed(f"nft list table {FAMILY} {table_name(third_octet)}", done)
    return done.stdout


def listing(third_octet: int) -> Optional[str]:
    """The sandbox's table as `nft list` prints it, or None when it has none (nor nft)."""
    return _listing(third_octet)


def current(third_octet: int) -> Optional[Partition]:
    """The partition the sandbox's table holds, or None when it has none (nor nft)."""
    text = _listing(third_octet, "--json")
    if text is None:
        return None
    sets: dict[str, tuple] = {}
    rules = []
    for item in json.loads(text)["nftables"]:
        if "set" in item:
            elements = item["set"].get("elem", [])
            sets[item["set"]["name"]] = tuple(e if isinstance(e, (str, int)) else json.dumps(e) for e in elements)
        elif "rule" in item:
            rules.append(json.dumps(item["rule"]))
    return Partition(
        cut=sets.get("cut", ()),
        rest=sets.get("rest", ()),
        ports=tuple(int(port) for port in sets.get("ports", ())),
        keep_client=any('"@rest"' in rule for rule in rules),
    )


def heal(third_octet: int) -> bool:
    """Deletes the sandbox's table; whether there was one. Without nft nothing was cut."""
    if _listing(third_octet) is None:
        return False
    done = _nft("delete", "table", FAMILY, table_name(third_octet))
    if done.returncode != 0 and "No such file or directory" not in done.stderr:
        raise _failed(f"nft delete table {FAMILY} {table_name(third_octet)}", done)
    return done.returncode == 0
