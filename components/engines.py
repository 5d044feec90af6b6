"""The two engines a stack can deploy, Redis and Valkey: their binaries, default images, the
version an image carries, and which engine or version changes a running stack may take.

Pure data and functions, no Pulumi: the settings, the workload, the guard that refuses
unsafe changes, the sandbox and the tests all read the same table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

Version = tuple[int, int, int]


@dataclass(frozen=True)
class Engine:
    name: str
    # What the image ships under these names, and the scripts call: no compatibility link.
    server: str
    cli: str
    # Pinned to one patch release of the newest line upstream supports.
    default_image: str
    # The line the integration suite runs (tests/integration/test_engine_binaries.py holds
    # the binary to it): the default image's, unless Debian ships no such line; the README
    # states any gap between the two.
    tested_line: tuple[int, int]
    # The oldest line the product's config and scripts start on.
    oldest_line: tuple[int, int]
    licence: str

    @property
    def default_version(self) -> Version:
        version = image_version(self.default_image)
        assert version is not None, self.default_image
        return version


REDIS = Engine(
    name="redis",
    server="redis-server",
    cli="redis-cli",
    default_image="redis:8.10.2-trixie",
    # Debian ships Redis 8.0, a line upstream stopped building in May 2026.
    tested_line=(8, 0),
    oldest_line=(7, 0),
    licence="RSALv2, SSPLv1 or AGPLv3 (Redis 8); RSALv2 or SSPLv1 (7.4); BSD-3-Clause (7.2 and older)",
)
VALKEY = Engine(
    name="valkey",
    server="valkey-server",
    cli="valkey-cli",
    default_image="valkey/valkey:9.1.2-trixie",
    tested_line=(9, 1),
    oldest_line=(8, 0),
    licence="BSD-3-Clause",
)
ENGINES: dict[str, Engine] = {engine.name: engine for engine in (REDIS, VALKEY)}
DEFAULT_ENGINE = REDIS.name

# The tag's leading major.minor.patch: 8.0.6, 8.0.6-bookworm, 9.1.2-trixie, v8.0.6-alpine.
_TAG_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-|$)")


def _repository_and_tag(image: str) -> tuple[str, Optional[str]]:
    """`registry:5000/path/name:tag@digest` -> (`registry:5000/path/name`, `tag`)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, None


def image_engine(image: str) -> Optional[str]:
    """The engine an image's repository names by its last path part (`redis`,
    `valkey/valkey`, `123.dkr.ecr.../mirror/valkey`), or None for any other name."""
    repository, _tag = _repository_and_tag(image)
    last = repository.rsplit("/", 1)[-1]
    return last if last in ENGINES else None


def image_version(image: str) -> Optional[Version]:
    """The release an image's tag names (`redis:8.0.6-bookworm` -> (8, 0, 6)), or None
    when the tag names none (a digest alone, or a moving tag)."""
    _repository, tag = _repository_and_tag(image)
    match = _TAG_VERSION.match(tag or "")
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


def format_version(version: Version) -> str:
    return ".".join(map(str, version))


def image_problems(engine: Engine, image: str) -> list[str]:
    """Why `image` cannot run as `engine` (empty when it can): the wrong engine, no version
    in the tag, or a line older than the product supports."""
    named = image_engine(image)
    if named is None:
        return [
            f"an image of the {engine.name} engine, whose repository's last part is "
            f"{engine.name!r} (like {engine.default_image})"
        ]
    if named != engine.name:
        return [
            f"an image of the {engine.name} engine, not a {named} image; set engine to {named!r} "
            f"or use a {engine.name} image (like {engine.default_image})"
        ]
    version = image_version(image)
    if version is None:
        return [
            "a tag that names the release, with the digest beside it if you pin one "
            f"({engine.default_image}@sha256:<64 hex>): the release decides which changes a running stack may take"
        ]
    if version[:2] < engine.oldest_line:
        oldest = ".".join(map(str, engine.oldest_line))
        return [f"{engine.name} {oldest} or newer, not {format_version(version)}"]
    return []


def change_refusal(
    old_engine: str, old_version: Optional[Version], new_engine: str, new_version: Version
) -> Optional[str]:
    """Why a running stack on `old_engine` at `old_version` cannot roll to the new engine and
    version (None when it can: same engine, same or newer line, or a patch release of the
    same line in either direction).

    A pod that restarts on another engine, or on an older line, has to load the AOF the
    other wrote: Valkey 9 (RDB format 80) refuses Redis 7.4 and 8's formats 12 to 15 and
    Redis refuses Valkey 9's, and a line never promises to read what a newer line wrote
    (Redis 8.10 writes format 15, 8.6 reads up to 13). The rolled pod would then
    crash-loop on its own data."""
    if old_engine != new_engine:
        return (
            f"the stack runs {old_engine} and cannot roll to {new_engine}: pods of the other engine "
            f"cannot load the data the running ones wrote. Deploy a new stack with engine={new_engine} "
            "and move the data over (docs/operations.md, Changing the engine)"
        )
    if old_version is not None and new_version[:2] < old_version[:2]:
        return (
            f"the stack runs {old_engine} {format_version(old_version)} and cannot roll back to "
            f"{format_version(new_version)}: an older line is not guaranteed to load the AOF and RDB a newer one "
            "wrote. If no pod ever ran the newer release (its image never started), let this image through "
            "once with acceptManualChange image=<this image>; otherwise deploy a new stack at the older "
            "version and move the data over (docs/operations.md, Changing the engine)"
        )
    return None
