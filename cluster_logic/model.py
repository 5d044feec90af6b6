"""The node model: a node's address, the lines of CLUSTER NODES and CLUSTER INFO parsed,
and the slot-range arithmetic everything else is written in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

SLOTS = 16384
_ORDINAL = re.compile(r"-(\d+)$")


def pod_ordinal(pod: str) -> int:
    match = _ORDINAL.search(pod)
    return int(match.group(1)) if match else -1


def ordinal_prefix(pod: str) -> str:
    """ "redis-cluster-" for "redis-cluster-3": the StatefulSet's pod names without the ordinal."""
    match = _ORDINAL.search(pod)
    return pod[: match.start() + 1] if match else ""


@dataclass(frozen=True)
class NodeAddress:
    """One Redis node: the pod it runs in, the address other nodes reach it at, its zone."""

    pod: str
    host: str
    port: int = 6379
    zone: str = ""

    @property
    def ordinal(self) -> int:
        return pod_ordinal(self.pod)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def slot_ranges(slots: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted slots folded into inclusive (start, end) ranges."""
    ranges: list[tuple[int, int]] = []
    for slot in sorted(set(slots)):
        if ranges and ranges[-1][1] == slot - 1:
            ranges[-1] = (ranges[-1][0], slot)
        else:
            ranges.append((slot, slot))
    return ranges


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping ranges; adjacent ones joined."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def format_ranges(ranges: Iterable[tuple[int, int]]) -> list[str]:
    return [str(a) if a == b else f"{a}-{b}" for a, b in ranges]


def expand_ranges(ranges: Iterable[tuple[int, int]]) -> list[int]:
    return [slot for a, b in ranges for slot in range(a, b + 1)]


@dataclass(frozen=True)
class NodeEntry:
    """One line of CLUSTER NODES."""

    id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: Optional[str]
    link: str
    config_epoch: int
    slots: tuple[tuple[int, int], ...] = ()
    bus_port: int = 0
    migrating: tuple[tuple[int, str], ...] = ()
    importing: tuple[tuple[int, str], ...] = ()

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def myself(self) -> bool:
        return "myself" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    @property
    def slot_count(self) -> int:
        return sum(b - a + 1 for a, b in self.slots)


def parse_cluster_nodes(text: str) -> list[NodeEntry]:
    entries = []
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        node_id, address, flags, master, _ping, _pong, epoch, link = parts[:8]
        # host:port@cport[,hostname[,aux=value...]] (Redis 7.2+ adds the fields after the comma)
        hostport, _, bus = address.split(",", 1)[0].partition("@")
        host, _, port = hostport.rpartition(":")
        slots: list[tuple[int, int]] = []
        migrating: list[tuple[int, str]] = []
        importing: list[tuple[int, str]] = []
        for token in parts[8:]:
            if token.startswith("["):
                body = token.strip("[]")
                if "->-" in body:
                    slot, target = body.split("->-")
                    migrating.append((int(slot), target))
                elif "-<-" in body:
                    slot, source = body.split("-<-")
                    importing.append((int(slot), source))
            elif "-" in token:
                a, b = token.split("-")
                slots.append((int(a), int(b)))
            else:
                slots.append((int(token), int(token)))
        entries.append(
            NodeEntry(
                id=node_id,
                host=host,
                port=int(port or 0),
                flags=frozenset(flags.split(",")),
                master_id=None if master == "-" else master,
                link=link,
                config_epoch=int(epoch),
                slots=tuple(merge_ranges(slots)),
                migrating=tuple(migrating),
                importing=tuple(importing),
                bus_port=int(bus or 0),
            )
        )
    return entries


def parse_info(text: str) -> dict[str, str]:
    result = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            result[key.strip()] = value.strip()
    return result
