"""The engine setting (Redis or Valkey): what an image names, which images each engine takes,
which changes a running stack may take (the guard), and what the program renders for each."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from components import cluster_bootstrap as cb
from components.engines import (
    DEFAULT_ENGINE,
    ENGINES,
    REDIS,
    VALKEY,
    Version,
    change_refusal,
    image_engine,
    image_problems,
    image_version,
)
from components.setting_values import as_image
from components.stack_settings import SettingsError, load_stack_config, parse_settings
from tools.render_manifests import ProgramRun, run_program

DIGEST = "sha256:" + "0123456789abcdef" * 4
STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"
BOOTSTRAP = "pulumi-python:dynamic/redis:ClusterBootstrap"
GUARD = "pulumi-python:dynamic/redis:ClusterChangeGuard"

# -- what an image names ----------------------------------------------------------------

IMAGES: list[tuple[str, Optional[str], Optional[Version]]] = [
    ("redis:8.10.2-trixie", "redis", (8, 10, 2)),
    ("valkey/valkey:9.1.2-trixie", "valkey", (9, 1, 2)),
    ("redis:7.4.10", "redis", (7, 4, 10)),
    ("redis:v8.0.6-alpine", "redis", (8, 0, 6)),
    ("valkey/valkey:8.1.4-alpine3.22", "valkey", (8, 1, 4)),
    # A registry's port is no tag.
    ("registry.example.com:5000/redis:8.0.6", "redis", (8, 0, 6)),
    ("localhost:5000/valkey/valkey:9.0.0", "valkey", (9, 0, 0)),
    ("registry.example.com:5000/redis", "redis", None),
    ("registry.example.com:5000/team/valkey@" + DIGEST, "valkey", None),
    # Mirrors: only the repository's last part names the engine.
    ("111122223333.dkr.ecr.eu-west-1.amazonaws.com/mirror/valkey:9.1.2", "valkey", (9, 1, 2)),
    ("111122223333.dkr.ecr.eu-west-1.amazonaws.com/mirror/redis:7.4.10-bookworm", "redis", (7, 4, 10)),
    ("public.ecr.aws/docker/library/redis:8.10.2-trixie", "redis", (8, 10, 2)),
    ("public.ecr.aws/valkey/valkey:8.0.2", "valkey", (8, 0, 2)),
    # A tag with a digest beside it names its release; a digest alone names none.
    ("redis:8.0.6@" + DIGEST, "redis", (8, 0, 6)),
    ("valkey/valkey:9.1.2-trixie@" + DIGEST, "valkey", (9, 1, 2)),
    ("redis@" + DIGEST, "redis", None),
    ("valkey/valkey@" + DIGEST, "valkey", None),
    # Moving tags, or none, name no release.
    ("redis:latest", "redis", None),
    ("redis:8.0", "redis", None),
    ("redis:8", "redis", None),
    ("redis", "redis", None),
    ("redis:8.0.6rc1", "redis", None),
    # Other repositories are neither engine, whatever their name contains.
    ("bitnami/redis-cluster:7.2.4", None, (7, 2, 4)),
    ("redis/redis-stack-server:7.4.0-v1", None, (7, 4, 0)),
    ("eqalpha/keydb:6.3.4", None, (6, 3, 4)),
    ("valkey/valkey-bundle:8.1.0", None, (8, 1, 0)),
    ("redis-mirror/other:8.0.6", None, (8, 0, 6)),
]


@pytest.mark.parametrize("image, engine, version", IMAGES)
def test_image_engine_and_version(image: str, engine: Optional[str], version: Optional[Version]) -> None:
    assert image_engine(image) == engine
    assert image_version(image) == version


def test_versions_compare_as_numbers_not_text() -> None:
    assert image_version("redis:8.10.0") > image_version("redis:8.9.9")  # type: ignore[operator]


@pytest.mark.parametrize("engine", list(ENGINES.values()), ids=list(ENGINES))
def test_each_engines_default_image_is_valid_for_it_and_no_other(engine) -> None:
    assert as_image(engine.default_image) == engine.default_image
    assert image_engine(engine.default_image) == engine.name
    assert image_problems(engine, engine.default_image) == []
    assert engine.default_version[:2] >= engine.tested_line >= engine.oldest_line
    other = next(e for e in ENGINES.values() if e is not engine)
    assert image_problems(other, engine.default_image) != []


def test_the_default_engine_and_images() -> None:
    assert DEFAULT_ENGINE == "redis" and set(ENGINES) == {"redis", "valkey"}
    assert (REDIS.server, REDIS.cli, REDIS.default_image) == ("redis-server", "redis-cli", "redis:8.10.2-trixie")
    assert (VALKEY.server, VALKEY.cli, VALKEY.default_image) == (
        "valkey-server",
        "valkey-cli",
        "valkey/valkey:9.1.2-trixie",
    )


IMAGE_PROBLEMS = [
    (REDIS, "redis:8.10.2-trixie", []),
    (REDIS, "redis:7.0.15", []),  # the oldest line supported
    (REDIS, "111122223333.dkr.ecr.eu-west-1.amazonaws.com/mirror/redis:8.0.6@" + DIGEST, []),
    (VALKEY, "valkey/valkey:8.0.2", []),
    (VALKEY, "registry.example.com:5000/valkey:9.1.2", []),
    (REDIS, "redis:6.2.14", ["redis 7.0 or newer, not 6.2.14"]),
    (VALKEY, "valkey/valkey:7.2.5", ["valkey 8.0 or newer, not 7.2.5"]),
    (REDIS, "valkey/valkey:9.1.2", ["an image of the redis engine, not a valkey image", "set engine to 'valkey'"]),
    (VALKEY, "redis:8.0.6", ["an image of the valkey engine, not a redis image", "set engine to 'redis'"]),
    (REDIS, "bitnami/redis-cluster:7.2.4", ["repository's last part is 'redis'", REDIS.default_image]),
    (VALKEY, "valkey/valkey-bundle:8.1.0", ["repository's last part is 'valkey'", VALKEY.default_image]),
    (REDIS, "redis@" + DIGEST, ["a tag that names the release", "@sha256:<64 hex>"]),
]


@pytest.mark.parametrize("engine, image, fragments", IMAGE_PROBLEMS)
def test_image_problems(engine, image: str, fragments: list[str]) -> None:
    problems = image_problems(engine, image)
    if not fragments:
        assert problems == []
    else:
        (problem,) = problems
        for fragment in fragments:
            assert fragment in problem


# -- which changes a running stack may take ---------------------------------------------

ALLOWED_CHANGES = [
    ("redis", (7, 4, 10), "redis", (8, 10, 2)),  # upgrade across majors
    ("redis", (8, 9, 0), "redis", (8, 10, 2)),  # 8.9 -> 8.10: numbers, not text
    ("valkey", (8, 1, 4), "valkey", (9, 1, 2)),
    ("redis", (8, 10, 2), "redis", (8, 10, 2)),  # no change
    ("redis", (8, 10, 2), "redis", (8, 10, 1)),  # a patch back within the line
    ("valkey", (9, 1, 2), "valkey", (9, 1, 0)),
    ("redis", None, "redis", (7, 0, 15)),  # old version unknown: no line to hold to
    ("valkey", None, "valkey", (8, 0, 2)),
]


@pytest.mark.parametrize("old_engine, old_version, new_engine, new_version", ALLOWED_CHANGES)
def test_allowed_changes(old_engine, old_version, new_engine, new_version) -> None:
    assert change_refusal(old_engine, old_version, new_engine, new_version) is None


REFUSED_CHANGES = [
    # Another line back, minor or major.
    (("redis", (8, 10, 2), "redis", (8, 6, 0)), ["redis 8.10.2", "8.6.0", "older line"]),
    (("redis", (8, 10, 2), "redis", (8, 9, 9)), ["redis 8.10.2", "8.9.9"]),
    (("redis", (8, 0, 6), "redis", (7, 4, 10)), ["redis 8.0.6", "7.4.10"]),
    (("valkey", (9, 1, 2), "valkey", (8, 1, 4)), ["valkey 9.1.2", "8.1.4"]),
    # Another engine, whichever version and direction.
    (("redis", (8, 0, 6), "valkey", (9, 1, 2)), ["runs redis", "cannot roll to valkey", "engine=valkey"]),
    (("valkey", (9, 1, 2), "redis", (8, 10, 2)), ["runs valkey", "cannot roll to redis", "engine=redis"]),
    (("redis", None, "valkey", (9, 1, 2)), ["runs redis", "cannot roll to valkey"]),
]


@pytest.mark.parametrize("change, fragments", REFUSED_CHANGES)
def test_refused_changes_say_why_and_where_to_read_on(change, fragments: list[str]) -> None:
    refusal = change_refusal(*change)
    assert refusal is not None
    for fragment in fragments + ["docs/operations.md", "Changing the engine"]:
        assert fragment in refusal


# -- the settings -----------------------------------------------------------------------


def settings_problems(values: dict[str, str]) -> tuple[str, ...]:
    with pytest.raises(SettingsError) as raised:
        parse_settings(values)
    return raised.value.problems


def test_engine_unset_is_redis_on_its_default_image() -> None:
    settings = parse_settings({})
    assert (settings.engine, settings.image) == ("redis", REDIS.default_image)
    assert settings.engine_spec is REDIS and settings.engine_version == (8, 10, 2)


def test_engine_valkey_picks_the_valkey_default_image() -> None:
    settings = parse_settings({"engine": "valkey"})
    assert (settings.engine, settings.image) == ("valkey", VALKEY.default_image)
    assert settings.engine_spec is VALKEY and settings.engine_version == (9, 1, 2)


@pytest.mark.parametrize(
    "image",
    [
        "valkey/valkey:9.1.2-trixie",
        "valkey/valkey:8.0.2-alpine@" + DIGEST,
        "111122223333.dkr.ecr.eu-west-1.amazonaws.com/mirror/valkey:8.1.4",
    ],
)
def test_a_valkey_image_with_engine_valkey_is_accepted(image: str) -> None:
    settings = parse_settings({"engine": "valkey", "image": image})
    assert (settings.engine, settings.image) == ("valkey", image)


def test_a_valkey_image_with_the_engine_unset_names_both_settings() -> None:
    (problem,) = settings_problems({"image": "valkey/valkey:9.1.2-trixie"})
    for fragment in ("redis-eks:image", "'valkey/valkey:9.1.2-trixie'", "redis-eks:engine", "'redis'", "'valkey'"):
        assert fragment in problem


def test_a_redis_image_with_engine_valkey_is_refused() -> None:
    (problem,) = settings_problems({"engine": "valkey", "image": "redis:8.0.6"})
    assert "redis-eks:image" in problem and "redis-eks:engine = 'valkey'" in problem


@pytest.mark.parametrize(
    "values, fragments",
    [
        ({"engine": "valkey", "image": "valkey/valkey:7.2.5"}, ["'valkey/valkey:7.2.5'", "valkey 8.0 or newer"]),
        ({"image": "redis:6.2.14"}, ["'redis:6.2.14'", "redis 7.0 or newer"]),
        ({"engine": "redis", "image": "redis:6.2.14-bookworm"}, ["redis 7.0 or newer", "6.2.14"]),
    ],
)
def test_a_line_older_than_supported_is_refused(values: dict[str, str], fragments: list[str]) -> None:
    (problem,) = settings_problems(values)
    for fragment in ["redis-eks:image", *fragments]:
        assert fragment in problem


def test_an_unknown_engine_is_refused_naming_the_allowed_values() -> None:
    (problem,) = settings_problems({"engine": "keydb"})
    assert "redis-eks:engine" in problem and "'keydb'" in problem and "redis, valkey" in problem


def test_every_problem_of_a_run_is_reported_together() -> None:
    problems = settings_problems({"engine": "keydb", "shards": "2"})
    assert len(problems) == 2
    assert any("redis-eks:engine" in p and "'keydb'" in p for p in problems)
    assert any("redis-eks:shards" in p and "'2'" in p for p in problems)
    # And an image that does not suit the engine beside another bad value.
    problems = settings_problems({"image": "valkey/valkey:9.1.2", "replicasPerShard": "9"})
    assert len(problems) == 2
    assert any("redis-eks:engine" in p for p in problems) and any("redis-eks:replicasPerShard" in p for p in problems)
    # An engine that did not parse is not held against the image as well.
    (problem,) = settings_problems({"engine": "keydb", "image": "valkey/valkey:9.1.2"})
    assert "redis-eks:engine = 'keydb'" in problem


# -- the guard on a running stack -------------------------------------------------------

PASSWORD = "the-stack-password-0123456789"


def guard_props(engine: Optional[str] = "redis", image: Optional[str] = REDIS.default_image, **more: Any) -> dict:
    props = {"shards": 3, "replicas_per_shard": 1, "accept_manual_change": []}
    props.update({"engine": engine, "image": image}, **more)
    return props


def stored_guard(**props: Any) -> dict[str, Any]:
    """What a guard created with these inputs stored as its outputs (the olds of the next run)."""
    return dict(cb.ClusterChangeGuardProvider().create(guard_props(**props)).outs)


# A guard created before the engine setting: shape and password, no engine nor image (a
# guard of today holds no password).
LEGACY_GUARD = {"shards": 3, "replicas_per_shard": 1, "password": PASSWORD}


def check_failures(olds: dict, news: dict) -> list[tuple[str, str]]:
    return [(f.property, f.reason) for f in cb.ClusterChangeGuardProvider().check(olds, news).failures]


def test_the_guard_stores_engine_and_image() -> None:
    olds = stored_guard(engine="valkey", image=VALKEY.default_image)
    assert (olds["engine"], olds["image"]) == ("valkey", VALKEY.default_image)


def test_the_guard_refuses_switching_engine_on_a_running_stack() -> None:
    olds = stored_guard(engine="redis", image="redis:8.0.6")
    news = guard_props(engine="valkey", image=VALKEY.default_image)
    ((prop, reason),) = check_failures(olds, news)
    assert prop == "engine"
    for fragment in ("redis-eks:engine", "'valkey'", "runs redis", "docs/operations.md"):
        assert fragment in reason
    with pytest.raises(ValueError, match="cannot roll to valkey"):
        cb.ClusterChangeGuardProvider().update("cluster-change-guard", olds, news)


def test_the_guard_refuses_switching_back_from_valkey() -> None:
    olds = stored_guard(engine="valkey", image=VALKEY.default_image)
    ((prop, reason),) = check_failures(olds, guard_props(engine="redis", image=REDIS.default_image))
    assert prop == "engine" and "runs valkey" in reason and "'redis'" in reason


def test_the_guard_refuses_a_downgrade_to_an_older_line() -> None:
    olds = stored_guard(image="redis:8.10.2-trixie")
    news = guard_props(image="redis:8.6.1-trixie")
    ((prop, reason),) = check_failures(olds, news)
    assert prop == "image"
    for fragment in ("redis-eks:image", "'redis:8.6.1-trixie'", "8.10.2", "8.6.1", "docs/operations.md"):
        assert fragment in reason
    with pytest.raises(ValueError, match=r"cannot roll back to 8\.6\.1"):
        cb.ClusterChangeGuardProvider().update("cluster-change-guard", olds, news)


@pytest.mark.parametrize(
    "old_image, new_image",
    [
        ("redis:7.4.10-bookworm", "redis:8.10.2-trixie"),
        ("redis:8.10.2-trixie", "redis:8.10.2-trixie"),
        ("redis:8.10.2-trixie", "redis:8.10.1-trixie"),
        ("redis@" + DIGEST, "redis:7.0.15"),
    ],
)
def test_the_guard_lets_an_upgrade_or_a_patch_change_through(old_image: str, new_image: str) -> None:
    olds = stored_guard(image=old_image)
    news = guard_props(image=new_image)
    assert check_failures(olds, news) == []
    outs = cb.ClusterChangeGuardProvider().update("cluster-change-guard", olds, news).outs
    assert outs["image"] == new_image


def test_a_guard_from_before_the_engine_setting_ran_redis() -> None:
    ((prop, reason),) = check_failures(LEGACY_GUARD, guard_props(engine="valkey", image=VALKEY.default_image))
    assert prop == "engine" and "runs redis" in reason and "redis-eks:engine" in reason


@pytest.mark.parametrize("image", ["redis:7.0.15", "redis:7.4.10-bookworm", "redis:8.10.2-trixie"])
def test_a_guard_from_before_the_engine_setting_takes_any_redis_version(image: str) -> None:
    assert check_failures(LEGACY_GUARD, guard_props(image=image)) == []
    # The update that follows stores engine and image for the next run to judge.
    guard = cb.ClusterChangeGuardProvider()
    assert guard.diff("cluster-change-guard", LEGACY_GUARD, guard_props(image=image)).changes is True
    outs = guard.update("cluster-change-guard", LEGACY_GUARD, guard_props(image=image)).outs
    assert (outs["engine"], outs["image"]) == ("redis", image)


@pytest.mark.parametrize("olds", [{}, None])
def test_a_new_guard_takes_any_engine(olds) -> None:
    assert check_failures(olds, guard_props(engine="valkey", image=VALKEY.default_image)) == []
    assert check_failures(olds, guard_props(engine="redis", image="redis:7.0.15")) == []


def test_the_guard_does_not_judge_unknown_values_during_preview() -> None:
    from pulumi.output import Unknown

    olds = stored_guard()
    assert check_failures(olds, guard_props(engine=Unknown(), image=VALKEY.default_image)) == []
    assert check_failures(olds, guard_props(image=Unknown())) == []


def test_an_engine_refusal_comes_with_the_other_refusals() -> None:
    olds = {**stored_guard(), "tls": False}
    news = guard_props(engine="valkey", image=VALKEY.default_image, tls=True)
    assert sorted(prop for prop, _ in check_failures(olds, news)) == ["engine", "tls"]


# -- the bootstrap's CLI ----------------------------------------------------------------


def test_the_bootstrap_takes_the_engines_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, dict]] = []
    monkeypatch.setattr(cb, "DirectTransport", lambda nodes, password, **kwargs: made.append(("direct", kwargs)))
    monkeypatch.setattr(
        cb.KubernetesTransport, "from_kubeconfig", lambda kubeconfig, **kwargs: made.append(("kubernetes", kwargs))
    )
    nodes = [{"pod": f"redis-cluster-{i}", "host": f"127.0.20.{i + 1}"} for i in range(6)]
    direct = {"shards": 3, "replicas_per_shard": 1, "password": PASSWORD, "transport": "direct", "nodes": nodes}
    kubernetes = {**direct, "transport": "kubernetes", "namespace": "redis", "stateful_set_name": "redis-cluster"}
    for props in (direct, kubernetes):
        # A bootstrap from before the engine setting ran Redis.
        assert cb.BootstrapSpec.from_props(props).engine == "redis"
        for engine in ("redis", "valkey"):
            cb.make_transport(cb.BootstrapSpec.from_props({**props, "engine": engine}))
    assert [(kind, kwargs["cli"]) for kind, kwargs in made] == [
        ("direct", "redis-cli"),
        ("direct", "valkey-cli"),
        ("kubernetes", "redis-cli"),
        ("kubernetes", "valkey-cli"),
    ]
    assert [p for p, _ in cb.validate({**direct, "engine": "keydb"})] == ["engine"]


# -- what the program renders for each engine -------------------------------------------


def render(**overrides: str) -> ProgramRun:
    config = load_stack_config("dev")
    config.update({f"redis-eks:{key}": value for key, value in overrides.items()})
    return run_program(config, stack="dev")


@pytest.mark.parametrize(
    "overrides, server, cli, image",
    [
        ({}, "redis-server", "redis-cli", "redis:8.10.2-trixie"),
        ({"engine": "redis"}, "redis-server", "redis-cli", "redis:8.10.2-trixie"),
        ({"engine": "valkey"}, "valkey-server", "valkey-cli", "valkey/valkey:9.1.2-trixie"),
        (
            {"engine": "valkey", "image": "valkey/valkey:8.1.4-alpine"},
            "valkey-server",
            "valkey-cli",
            "valkey/valkey:8.1.4-alpine",
        ),
    ],
)
def test_the_program_runs_the_engines_server_cli_and_image(overrides, server: str, cli: str, image: str) -> None:
    run = render(**overrides)
    containers = run.one(STATEFUL_SET).inputs["spec"]["template"]["spec"]["containers"]
    container = next(c for c in containers if c["name"] == "redis")
    assert container["image"] == image
    assert container["command"] == ["sh", "/conf/entrypoint.sh"]
    assert container["args"] == [server, "/conf/redis.conf"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ENGINE_CLI"] == cli
    engine = overrides.get("engine", "redis")
    assert run.one(BOOTSTRAP).inputs["engine"] == engine
    guard = run.one(GUARD).inputs
    assert (guard["engine"], guard["image"]) == (engine, image)


def test_the_program_refuses_an_image_of_the_other_engine() -> None:
    with pytest.raises(SettingsError, match="redis-eks:engine"):
        render(image="valkey/valkey:9.1.2-trixie")


def test_an_older_image_named_in_accept_manual_change_goes_through_once() -> None:
    # An upgrade whose image never started (a bad tag): going back to the running release
    # is let through when the operator names exactly that image, and only that one.
    olds = stored_guard(image="redis:8.10.2-trixie")
    back = guard_props(image="redis:8.6.1-trixie", accept_manual_change=["image=redis:8.6.1-trixie"])
    assert check_failures(olds, back) == []
    other = guard_props(image="redis:8.4.0-trixie", accept_manual_change=["image=redis:8.6.1-trixie"])
    assert [prop for prop, _ in check_failures(olds, other)] == ["image"]
    # Another engine is never let through: its data cannot be read.
    switch = guard_props(
        engine="valkey", image=VALKEY.default_image, accept_manual_change=[f"image={VALKEY.default_image}"]
    )
    assert [prop for prop, _ in check_failures(olds, switch)] == ["engine"]


def test_accept_manual_change_takes_an_image() -> None:
    settings = parse_settings({"acceptManualChange": '["image=redis:8.6.1-trixie"]'})
    assert settings.accept_manual_change == ("image=redis:8.6.1-trixie",)


@pytest.mark.parametrize("new_engine, changes", [("redis", False), (None, False), ("valkey", True)])
def test_a_bootstrap_from_before_the_engine_setting_sees_redis_as_no_change(new_engine, changes: bool) -> None:
    # Its stored state has no engine at all: that stack ran Redis, so `engine: redis` is
    # no reason to run an update against the live cluster.
    olds = {"shards": 3, "replicas_per_shard": 1, "password": PASSWORD, "transport": "direct", "state": "ok"}
    olds["nodes"] = [{"pod": f"redis-cluster-{i}", "host": f"10.0.0.{i}"} for i in range(6)]
    news = {key: value for key, value in olds.items() if key != "state"}
    news["engine"] = new_engine
    assert cb.ClusterBootstrapProvider().diff("id", olds, news).changes is changes
