"""The nodes' announced DNS names on this machine, for the processes that need them.

With TLS, a node announces its stable DNS name (`<pod>.<headless>.<ns>.svc.cluster.local`)
and a cluster sends clients there (MOVED, ASK, CLUSTER SHARDS/SLOTS). Kubernetes resolves
those names; here nothing does. A hosts file maps each name to its node's loopback address,
and nss_wrapper (Debian's `libnss-wrapper`, preloaded with LD_PRELOAD) makes a process
resolve names through that file instead of /etc/hosts and DNS: only the processes started
with `resolving_environment`, never this machine, never this Python process.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Mapping, Optional

NSS_WRAPPER_PATTERNS = ("/usr/lib/*/libnss_wrapper.so", "/usr/lib/libnss_wrapper.so", "/usr/lib64/libnss_wrapper.so")


class NssWrapperMissing(RuntimeError):
    pass


def nss_wrapper_library() -> Optional[str]:
    """The path of libnss_wrapper.so, or None when it is not installed."""
    for pattern in NSS_WRAPPER_PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def render_hosts(addresses: Mapping[str, str]) -> str:
    """A hosts file (`<address> <name>` per line) from name -> address."""
    lines = []
    for name, address in addresses.items():
        if not name or not address or any(c.isspace() for c in name + address):
            raise ValueError(f"a hosts entry must be two words, got {address!r} {name!r}")
        lines.append(f"{address} {name}\n")
    return "".join(lines)


def write_hosts(path: Path, addresses: Mapping[str, str]) -> None:
    """Replaces `path` at once, as a DNS update would change the answers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(render_hosts(addresses))
    os.replace(staged, path)


def resolving_environment(hosts_file: Path, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """`base` (default: none) plus what makes a process resolve names through `hosts_file`.
    nss_wrapper needs no passwd or group file of its own for host names."""
    library = nss_wrapper_library()
    if library is None:
        raise NssWrapperMissing(
            "libnss_wrapper.so is not installed (Debian: libnss-wrapper; tools/install-system-packages.sh)"
        )
    env = dict(base or {})
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{library} {preload}".strip()
    env["NSS_WRAPPER_HOSTS"] = str(Path(hosts_file).resolve())
    return env
