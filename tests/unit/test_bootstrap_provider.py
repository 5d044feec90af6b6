"""The provider seam: input validation, the scale-in and password guards, diffs, secrets in
outputs and errors, and that the provider pickles and imports the way the engine needs."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cluster_logic.credentials import password_hash, wanted_credentials
from cluster_logic.errors import BootstrapError, ForeignNodes, ScaleInRefused, UnexpectedCluster
from cluster_logic.transports.base import TransportError
from cluster_logic.transports.kubernetes_api import in_pod_cli_argv
from components import cluster_bootstrap as cb
from testkit.fake_transport import FakeTransport, six_nodes

REPO = Path(__file__).resolve().parents[2]


# -- provider inputs --------------------------------------------------------------------


def direct_props(**overrides: Any) -> dict[str, Any]:
    props = {
        "shards": 3,
        "replicas_per_shard": 1,
        "password": "secret-password-123",
        "transport": "direct",
        "nodes": [{"pod": f"redis-cluster-{i}", "host": f"127.0.20.{i + 1}", "port": 6379} for i in range(6)],
    }
    props.update(overrides)
    return props


def test_validate_inputs() -> None:
    assert cb.validate(direct_props()) == []
    assert [p for p, _ in cb.validate(direct_props(shards=2))] == ["shards"]
    assert [p for p, _ in cb.validate(direct_props(transport="ssh"))] == ["transport"]
    assert [p for p, _ in cb.validate(direct_props(shards=4))] == ["nodes"]
    assert [p for p, _ in cb.validate({**direct_props(), "transport": "kubernetes", "namespace": ""})] == [
        "namespace",
        "stateful_set_name",
    ]


def test_unknown_values_are_not_judged_during_preview() -> None:
    from pulumi.output import Unknown

    assert cb.validate(direct_props(shards=Unknown(), password=Unknown(), nodes=Unknown())) == []


def test_a_smaller_shape_passes_the_guard_and_the_bootstrap() -> None:
    """The scale-in step (ClusterScaleIn, before the StatefulSet) empties the pods that go;
    neither the guard nor the bootstrap refuses the smaller shape any more."""
    provider = cb.ClusterBootstrapProvider()
    checked = provider.check(direct_props(shards=4, nodes=direct_props()["nodes"] * 2), direct_props())
    assert list(checked.failures) == []
    assert provider.diff("id", direct_props(replicas_per_shard=2), direct_props()).changes is True
    guard = cb.ClusterChangeGuardProvider()
    olds = {"shards": 4, "replicas_per_shard": 2, "scale_in_step": True}
    for shards, replicas in ((3, 2), (4, 1), (2, 0)):
        news = {"shards": shards, "replicas_per_shard": replicas, "scale_in_step": True}
        assert list(guard.check(olds, news).failures) == []


@pytest.mark.parametrize(
    "news, refused",
    [
        ({"shards": 3, "replicas_per_shard": 2}, ["shards"]),
        ({"shards": 4, "replicas_per_shard": 1}, ["replicas_per_shard"]),
        ({"shards": 2, "replicas_per_shard": 0}, ["shards", "replicas_per_shard"]),
        ({"shards": 5, "replicas_per_shard": 2}, []),  # scaling out needs no step before it
        ({"shards": 4, "replicas_per_shard": 2}, []),
    ],
)
def test_the_first_run_after_the_upgrade_refuses_a_smaller_shape(news: dict, refused: list[str]) -> None:
    """A guard recorded before the scale-in step existed: that run creates ClusterScaleIn,
    which has no earlier shape to empty pods by, so the StatefulSet would delete pods that
    hold slots. The smaller shape waits for the run after (refused at check and update)."""
    olds = {"shards": 4, "replicas_per_shard": 2}
    news = {**news, "scale_in_step": True}
    failures, _ = checked_guard(olds, news)
    assert failures == refused
    if refused:
        reason = cb.ClusterChangeGuardProvider().check(olds, news).failures[0].reason
        assert "first `pulumi up` after the upgrade" in reason and "ClusterScaleIn" in reason
        with pytest.raises(ValueError, match="cannot go from"):
            cb.ClusterChangeGuardProvider().update("guard", olds, news)
    # A new stack has nothing to compare.
    assert checked_guard({}, news)[0] == []


def checked_guard(olds: dict, news: dict) -> tuple[list[str], dict]:
    """What the guard's check refuses, and the inputs it returns (which the engine stores
    and hands back as the olds of the next run)."""
    result = cb.ClusterChangeGuardProvider().check(olds, news)
    return [f.property for f in result.failures], dict(result.inputs)


def test_a_new_namespace_is_refused_unless_named_once() -> None:
    """Another namespace would be a new, empty cluster, the old one deleted: refused at check
    (and at update, without a preview); `namespace=<new>` lets exactly that one through."""
    olds = {"shards": 3, "replicas_per_shard": 1, "namespace": "redis"}
    moved = {"shards": 3, "replicas_per_shard": 1, "namespace": "cache"}
    refused, _ = checked_guard(olds, moved)
    assert refused == ["namespace"]
    reason = cb.ClusterChangeGuardProvider().check(olds, moved).failures[0].reason
    assert "new, empty cluster in 'cache'" in reason and "acceptManualChange namespace=cache" in reason
    with pytest.raises(ValueError, match="redis-eks:namespace cannot go from 'redis' to 'cache'"):
        cb.ClusterChangeGuardProvider().update("guard", olds, moved)
    assert checked_guard(olds, {**moved, "accept_manual_change": ["namespace=other"]})[0] == ["namespace"]
    assert checked_guard(olds, {**moved, "accept_manual_change": ["namespace=cache"]})[0] == []
    # A new stack, an unchanged namespace and a guard from before it held one pass.
    assert checked_guard({}, moved)[0] == []
    assert checked_guard(olds, dict(olds))[0] == []
    assert checked_guard({"shards": 3, "replicas_per_shard": 1}, moved)[0] == []
    assert cb.ClusterChangeGuardProvider().diff("guard", olds, moved).changes is True


def test_an_opt_in_lets_one_change_through_and_is_then_spent() -> None:
    """The guard records an acceptManualChange item that let a change through; left in the
    stack, it lets no second change through. Removed, it is forgotten and can be given again."""
    redis = {"shards": 3, "replicas_per_shard": 1, "namespace": "redis"}
    accepted = {**redis, "namespace": "cache", "accept_manual_change": ["namespace=cache"]}
    refused, stored = checked_guard(redis, accepted)
    assert refused == [] and stored[cb.USED_FIELD] == ["namespace=cache"]
    # The next runs, the item still set: nothing to change, and the record stays.
    refused, stored = checked_guard(stored, accepted)
    assert refused == [] and stored[cb.USED_FIELD] == ["namespace=cache"]
    # Back to redis, then to cache again: the stale opt-in does not pass it.
    refused, stored = checked_guard(
        stored, {**accepted, "namespace": "redis", "accept_manual_change": ["namespace=cache", "namespace=redis"]}
    )
    refused, stored = checked_guard(
        stored, {**accepted, "namespace": "redis", "accept_manual_change": ["namespace=cache"]}
    )
    reason = cb.ClusterChangeGuardProvider().check(stored, accepted).failures[0].reason
    assert "used by an earlier `pulumi up`" in reason
    with pytest.raises(ValueError, match="used by an earlier"):
        cb.ClusterChangeGuardProvider().update("guard", stored, accepted)
    # Removed for one run, it is forgotten; given again, it passes this change.
    refused, stored = checked_guard(stored, {**stored, "accept_manual_change": []})
    assert refused == [] and stored[cb.USED_FIELD] == []
    assert checked_guard(stored, accepted) == ([], {**accepted, cb.USED_FIELD: ["namespace=cache"]})


def test_an_opt_in_that_let_nothing_through_is_not_spent() -> None:
    """Set ahead of the change it is for, an item is not recorded until it is used."""
    olds = {"shards": 3, "replicas_per_shard": 1, "namespace": "redis"}
    early = {**olds, "accept_manual_change": ["namespace=cache"]}
    assert checked_guard(olds, early) == ([], {**early, cb.USED_FIELD: []})


@pytest.mark.parametrize("old, new", [(False, True), (True, False), (None, True)])
def test_tls_cannot_be_switched_on_a_running_stack(old, new) -> None:
    guard = cb.ClusterChangeGuardProvider()
    olds = {"shards": 3, "replicas_per_shard": 1, **({} if old is None else {"tls": old})}
    failures = guard.check(olds, {"shards": 3, "replicas_per_shard": 1, "tls": new}).failures
    assert [f.property for f in failures] == ["tls"]
    assert "new stack" in failures[0].reason
    # A new stack takes either; an unchanged one passes.
    assert list(guard.check({}, {"shards": 3, "replicas_per_shard": 1, "tls": new}).failures) == []
    assert list(guard.check({**olds, "tls": new}, {"shards": 3, "replicas_per_shard": 1, "tls": new}).failures) == []


def test_a_new_password_is_no_refusal_any_more_it_is_rotated() -> None:
    guard = cb.ClusterChangeGuardProvider()
    olds = {"shards": 3, "replicas_per_shard": 1, "password": "the-old-password-0123456789"}
    news = {"shards": 3, "replicas_per_shard": 1, "password": "a-new-password-0123456789"}
    assert list(guard.check(olds, news).failures) == []
    # A guard of an older version held the password: no longer a field it compares.
    assert guard.diff("id", olds, {"shards": 3, "replicas_per_shard": 1}).changes is False


def test_the_opt_in_alone_is_no_change_to_the_cluster() -> None:
    provider = cb.ClusterBootstrapProvider()
    olds = {key: value for key, value in direct_props().items() if key != "accept_manual_change"}
    news = direct_props(accept_manual_change=["namespace=cache"])
    assert provider.diff("id", {**olds, "state": "ok"}, news).changes is False


def test_diff_replaces_on_other_pods_and_updates_on_drift() -> None:
    provider = cb.ClusterBootstrapProvider()
    olds = {**direct_props(), "state": "ok"}
    assert provider.diff("id", olds, direct_props()).changes is False
    assert provider.diff("id", {**olds, "state": "degraded"}, direct_props()).changes is True
    grown = provider.diff("id", olds, direct_props(shards=4))
    assert grown.changes is True and grown.replaces == []
    moved = provider.diff("id", {**olds, "transport": "kubernetes"}, direct_props())
    assert moved.replaces == ["transport"]


def test_outputs_keep_secrets_wrapped() -> None:
    from pulumi.runtime import rpc

    outs = cb._outputs(direct_props(), {"state": "ok"})
    assert rpc.is_rpc_secret(outs["password"]) and outs["password"]["value"] == "secret-password-123"
    assert "secret-password-123" not in repr(cb.BootstrapSpec.from_props(direct_props()))


def test_a_broken_kubeconfig_is_not_quoted_in_the_error() -> None:
    spec = cb.BootstrapSpec.from_props(
        {
            **direct_props(),
            "transport": "kubernetes",
            "namespace": "redis",
            "stateful_set_name": "redis-cluster",
            "kubeconfig": "clusters: [ {token: very-secret-token",
        }
    )
    with pytest.raises(ValueError) as failed:
        cb.make_transport(spec)
    assert "very-secret-token" not in str(failed.value) and failed.value.__cause__ is None


@pytest.mark.parametrize("cli", ["redis-cli", "valkey-cli"])
def test_in_pod_argv_runs_the_engines_cli_with_the_password_read_inside_the_pod(tmp_path: Path, cli: str) -> None:
    # What the pod's sh does with the exec request: a stand-in CLI reports its arguments
    # and the variables each engine's CLI reads the password from.
    secret = tmp_path / "password"
    secret.write_text("pod-side-Passw0rd")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / cli).write_text('#!/bin/sh\necho "$0 $* REDISCLI_AUTH=$REDISCLI_AUTH VALKEYCLI_AUTH=$VALKEYCLI_AUTH"\n')
    (bin_dir / cli).chmod(0o755)
    argv = in_pod_cli_argv(["--cluster", "create", "10.0.0.1:6379"], cli, str(secret))
    assert "pod-side-Passw0rd" not in " ".join(argv)
    ran = subprocess.run(
        ["dash" if shutil.which("dash") else "sh", *argv[1:]],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout.split() == [
        str(bin_dir / cli),
        "--cluster",
        "create",
        "10.0.0.1:6379",
        "REDISCLI_AUTH=pod-side-Passw0rd",
        "VALKEYCLI_AUTH=pod-side-Passw0rd",
    ]


# -- how the engine loads it ------------------------------------------------------------


def test_module_imports_in_a_fresh_process_without_creating_resources() -> None:
    code = (
        "import sys, components.cluster_bootstrap as m;"
        "assert 'kubernetes' not in sys.modules, 'kubernetes is imported lazily';"
        "print(m.ClusterBootstrap.__name__, m.ClusterBootstrapProvider.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ClusterBootstrap", "ClusterBootstrapProvider"]


def test_serialized_provider_loads_in_a_fresh_process() -> None:
    from pulumi.dynamic.dynamic import serialize_provider

    blob = serialize_provider(cb.ClusterBootstrapProvider())
    assert "secret-password" not in base64.b64decode(blob).decode("latin-1")
    code = (
        "import base64, sys, dill;"
        "p = dill.loads(base64.b64decode(sys.stdin.read()));"
        "print(type(p).__module__, type(p).__name__, p.check({}, {'shards': 2}).failures[0].property)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, input=blob, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["components.cluster_bootstrap", "ClusterBootstrapProvider", "shards"]


def test_resource_registers_secret_inputs_and_output_attributes() -> None:
    import pulumi

    registered: list[Any] = []

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
            registered.append(args)
            return "id-1", {**args.inputs, "state": "ok", "node_count": 6}

        def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
            return {}, []

    pulumi.runtime.set_mocks(Mocks(), preview=False)

    @pulumi.runtime.test
    def body() -> Any:
        resource = cb.ClusterBootstrap(
            "bootstrap",
            cb.ClusterBootstrapArgs(
                shards=3,
                replicas_per_shard=1,
                password="secret-password-123",
                transport="direct",
                nodes=direct_props()["nodes"],
            ),
        )

        async def inspect() -> None:
            assert await resource.state.future() == "ok"
            assert await resource.node_count.future() == 6
            assert await resource.password.is_secret()  # type: ignore[attr-defined]
            for name in ("masters", "replicas", "placement"):
                assert isinstance(getattr(resource, name), pulumi.Output)

        return inspect()

    body()
    assert registered[0].typ == "pulumi-python:dynamic/redis:ClusterBootstrap"
    assert registered[0].inputs["shards"] == 3


# -- refusals and failures, as the operator reads them -----------------------------------


def _fails_with(message: str):
    def pod_statuses() -> None:
        raise RuntimeError(message)

    return pod_statuses


@pytest.mark.parametrize("method", ["create", "update"])
def test_no_error_of_a_run_quotes_a_secret(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    props = direct_props()
    leaky = FakeTransport(six_nodes(), on_pod_statuses=_fails_with(f"AUTH {props['password']} refused by 10.0.0.1"))
    monkeypatch.setattr(cb, "make_transport", lambda spec: leaky)
    provider = cb.ClusterBootstrapProvider()
    with pytest.raises(Exception) as failed:
        provider.create(props) if method == "create" else provider.update("id", props, props)
    assert props["password"] not in str(failed.value)
    assert "AUTH [secret] refused by 10.0.0.1" in str(failed.value)
    assert failed.value.__cause__ is None and failed.value.__suppress_context__


def test_more_masters_than_shards_left_names_the_scale_in_step() -> None:
    # A split shard on the StatefulSet's pods is merged (tests/integration/
    # test_cluster_bootstrap.py); masters beyond the shards that are still there are named.
    message = cb.operator_message(ScaleInRefused("shards", 4, 3))
    assert message.startswith("shards is 3, but 4 masters hold slots")
    assert "ClusterScaleIn" in message and "Run `pulumi up` again" in message


@pytest.mark.parametrize(
    "error, says",
    [
        (ForeignNodes("refusing ...", failed_and_slotless=True), "`pulumi refresh` and then `pulumi up`"),
        (ForeignNodes("refusing ...", failed_and_slotless=False), None),
        (UnexpectedCluster("not the expected one"), "Set shards/replicasPerShard to match it"),
        (BootstrapError("cannot reach redis-cluster-4"), None),
    ],
)
def test_operator_messages(error: BootstrapError, says: str | None) -> None:
    message = cb.operator_message(error)
    assert message.startswith(str(error))
    if says is None:
        assert message == str(error)
    else:
        assert says in message


def test_the_cluster_logic_speaks_no_pulumi() -> None:
    """Refusals in Pulumi's terms are the provider's to write; the cluster logic imports
    nothing from Pulumi nor from the Pulumi layer."""
    offenders = []
    for path in sorted((REPO / "cluster_logic").rglob("*.py")):
        text = path.read_text()
        for needle in ("import pulumi", "from pulumi", "from components", "acceptManualChange", "pulumi up"):
            if needle in text:
                offenders.append(f"{path.relative_to(REPO)}: {needle}")
    assert offenders == []


# -- the end of a rotation ----------------------------------------------------------------

OLD_PASSWORD, NEW_PASSWORD = "old-Passw0rd-0123456789", "new-Passw0rd-0123456789"


def _rotating_spec() -> cb.BootstrapSpec:
    credentials = cb.credentials_props(wanted_credentials(NEW_PASSWORD))
    return cb.BootstrapSpec.from_props(direct_props(password=NEW_PASSWORD, credentials=credentials))


def _nodes_on_the_old_password() -> FakeTransport:
    transport = FakeTransport(six_nodes())
    for node in transport.fake_nodes.values():
        node.users = {"default": {password_hash(OLD_PASSWORD)}, "replication": set()}
    return transport


def _removals(transport: FakeTransport) -> list[tuple]:
    return [
        args
        for node in transport.fake_nodes.values()
        for args in node.sent
        if any(str(a).startswith("!") for a in args)
    ]


def test_old_passwords_stay_until_every_pod_mounts_the_new_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = _nodes_on_the_old_password()
    # The kubelet has not refreshed the mounts yet: the probes still read the old password.
    monkeypatch.setattr(transport, "mounted_password_hash", lambda node: password_hash(OLD_PASSWORD))
    monkeypatch.setattr(cb.time, "sleep", lambda seconds: None)
    with pytest.raises(BootstrapError) as stopped:
        cb.finish_rotation(transport, _rotating_spec(), [OLD_PASSWORD], time.monotonic() + 0.2)
    assert "has not reached" in str(stopped.value) and "redis-cluster-0" in str(stopped.value)
    assert OLD_PASSWORD not in str(stopped.value)
    assert _removals(transport) == [], "an old password was removed while pods still read it"


def test_old_passwords_go_once_every_pod_mounts_the_new_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = _nodes_on_the_old_password()
    monkeypatch.setattr(transport, "mounted_password_hash", lambda node: password_hash(NEW_PASSWORD))
    monkeypatch.setattr(cb.time, "sleep", lambda seconds: None)
    cb.finish_rotation(transport, _rotating_spec(), [OLD_PASSWORD], time.monotonic() + 5)
    assert len(_removals(transport)) == 6
    assert all(node.users["default"] == {password_hash(NEW_PASSWORD)} for node in transport.fake_nodes.values())


def test_a_pod_out_of_reach_while_checking_its_mount_is_waited_for_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed exec (a pod restarting) used to end the rotation with a raw ApiException; the
    pod is now waited for like one still reading the old password."""
    transport = _nodes_on_the_old_password()
    answers = iter([TransportError("cannot read the mounted Secret in pod redis-cluster-0: 0 Handshake status 500")])

    def mounted(node):
        failure = next(answers, None) if node.pod == "redis-cluster-0" else None
        if failure:
            raise failure
        return password_hash(NEW_PASSWORD)

    monkeypatch.setattr(transport, "mounted_password_hash", mounted)
    monkeypatch.setattr(cb.time, "sleep", lambda seconds: None)
    cb.finish_rotation(transport, _rotating_spec(), [OLD_PASSWORD], time.monotonic() + 5)
    assert len(_removals(transport)) == 6


def test_a_pod_that_stays_out_of_reach_is_named_when_the_wait_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = _nodes_on_the_old_password()

    def mounted(node):
        if node.pod == "redis-cluster-4":
            raise TransportError("cannot read the mounted Secret in pod redis-cluster-4: 0 Handshake status 500")
        return password_hash(NEW_PASSWORD)

    monkeypatch.setattr(transport, "mounted_password_hash", mounted)
    monkeypatch.setattr(cb.time, "sleep", lambda seconds: None)
    with pytest.raises(BootstrapError, match=r"has not reached redis-cluster-4 \(cannot read"):
        cb.finish_rotation(transport, _rotating_spec(), [OLD_PASSWORD], time.monotonic() + 0.2)
    assert _removals(transport) == []
