"""`ClusterBootstrap`: a Pulumi dynamic resource that forms, converges, scales out and
refreshes the Redis Cluster running in the StatefulSet's pods.

It is the one seam between Pulumi and the cluster logic (`cluster_logic`): it turns props
into a spec, keeps secrets secret, builds a transport, calls `cluster_logic.reconcile`, and
puts the refusals in this program's terms (stack settings, `pulumi up`). The engine runs
it in a separate process
(`python -m pulumi.dynamic`) after unpickling it with dill; this module is pickled by
reference, so it must import cleanly and create nothing at import time.

It also finishes a rotation of credentials (`cluster_logic.credentials`): the nodes took
the new passwords before the Secret changed (`CredentialRotation`, beside this resource);
once every node holds them, and after the grace period, the old ones are removed here.

Secrets: `password`, `credentials` and `kubeconfig` are secret inputs. `read` (refresh)
only receives the stored outputs, so they are kept in the outputs too, always as secrets:
wrapped in the wire's secret marker by the provider and listed in `additional_secret_outputs`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import pulumi
import pulumi.dynamic
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, UpdateResult

from cluster_logic.credentials import (
    ADMIN_USER,
    Credential,
    converge_credentials,
    password_hash,
    read_credentials,
    wanted_credentials,
)
from cluster_logic.errors import BootstrapError, ForeignNodes, ScaleInRefused, UnexpectedCluster
from cluster_logic.reconcile import ensure_cluster, read_topology
from cluster_logic.transports.base import TlsOptions, TransportError
from cluster_logic.transports.direct import DirectTransport
from cluster_logic.transports.kubernetes_api import KubernetesTransport
from components.engines import DEFAULT_ENGINE, ENGINES, change_refusal, image_version
from components.stack_settings import MAX_REPLICAS_PER_SHARD, MAX_SHARDS, MIN_SHARDS

log = logging.getLogger(__name__)

TRANSPORTS = ("kubernetes", "direct")
DEFAULT_READY_TIMEOUT = 600

SECRET_FIELDS = ("password", "kubeconfig", "credentials")
INPUT_FIELDS = (
    "shards",
    "replicas_per_shard",
    "password",
    "transport",
    "kubeconfig",
    "namespace",
    "stateful_set_name",
    "pod_selector",
    "nodes",
    "ready_timeout_seconds",
    "accept_manual_change",
    "engine",
    "credentials",
    "tls_ca",
    "tls_secret",
    "rotation_grace_seconds",
)
# node_ids (node ID -> pod, for every ID the members list) outlives a pod's identity: after
# a pod lost its volume, it is what ties the old ID, still listed as failed, to that pod.
OUTPUT_FIELDS = ("state", "node_count", "masters", "replicas", "placement", "problems", "node_ids")
# Pointing the resource at other pods means another cluster: replace, never reshape.
REPLACE_FIELDS = ("transport", "namespace", "stateful_set_name")


@dataclass
class ClusterBootstrapArgs:
    shards: pulumi.Input[int]
    replicas_per_shard: pulumi.Input[int]
    password: pulumi.Input[str]  # secret
    transport: str  # "kubernetes" or "direct"
    kubeconfig: Optional[pulumi.Input[str]] = None  # secret; kubernetes transport
    namespace: Optional[pulumi.Input[str]] = None
    stateful_set_name: Optional[pulumi.Input[str]] = None
    pod_selector: Optional[pulumi.Input[str]] = None
    nodes: Optional[Sequence[Mapping[str, Any]]] = None  # direct transport
    ready_timeout_seconds: pulumi.Input[int] = DEFAULT_READY_TIMEOUT
    # The operator's explicit opt-in (stack setting acceptManualChange) after a scale-in
    # done by hand, e.g. ["shards=3"]: exactly that smaller shape is adopted, not refused.
    accept_manual_change: pulumi.Input[Sequence[str]] = ()
    # Whose CLI forms the cluster inside the pods (redis-cli or valkey-cli).
    engine: str = DEFAULT_ENGINE
    # secret: every user the nodes should hold, as `credentials_props` gives them; None:
    # only the admin (`password`) and the replication user.
    credentials: Optional[pulumi.Input[Sequence[Mapping[str, Any]]]] = None
    # The cluster CA's certificate (PEM) when the nodes speak TLS only; or, with a CA the
    # stack does not hold (cert-manager's issuer), the TLS Secret whose ca.crt it is.
    tls_ca: Optional[pulumi.Input[str]] = None
    tls_secret: Optional[pulumi.Input[str]] = None
    # How long a replaced password keeps working before it is removed.
    rotation_grace_seconds: pulumi.Input[int] = 0


def credentials_props(credentials: Sequence[Credential]) -> list[dict[str, Any]]:
    return [{"name": c.name, "passwords": list(c.passwords), "rules": list(c.rules)} for c in credentials]


# ---------------------------------------------------------------------------------------
# Property handling (plain dicts as the provider server hands them over).
# ---------------------------------------------------------------------------------------


def unwrap(value: Any) -> Any:
    from pulumi.runtime import rpc

    return rpc.unwrap_rpc_secret(value)


def as_secret(value: Any) -> Any:
    from pulumi.runtime import rpc

    return value if value is None else rpc.wrap_rpc_secret(value)


def is_unknown(value: Any) -> bool:
    from pulumi.output import Unknown
    from pulumi.runtime import rpc

    value = unwrap(value)
    return isinstance(value, Unknown) or value == rpc.UNKNOWN


@dataclass(frozen=True)
class BootstrapSpec:
    """Validated, plain inputs."""

    shards: int
    replicas_per_shard: int
    password: str
    transport: str
    kubeconfig: Optional[str] = None
    namespace: Optional[str] = None
    stateful_set_name: Optional[str] = None
    pod_selector: Optional[str] = None
    nodes: tuple[Mapping[str, Any], ...] = ()
    ready_timeout_seconds: int = DEFAULT_READY_TIMEOUT
    engine: str = DEFAULT_ENGINE
    credentials: tuple[Credential, ...] = ()
    tls_ca: Optional[str] = None
    tls_secret: Optional[str] = None
    rotation_grace_seconds: int = 0

    @property
    def pod_count(self) -> int:
        return self.shards * (1 + self.replicas_per_shard)

    def __repr__(self) -> str:  # never print the secrets
        return f"BootstrapSpec(shards={self.shards}, replicas_per_shard={self.replicas_per_shard}, transport={self.transport!r})"

    @classmethod
    def from_props(cls, props: Mapping[str, Any]) -> BootstrapSpec:
        failures = validate(props)
        if failures:
            raise ValueError("; ".join(f"{p}: {r}" for p, r in failures))
        plain = {k: unwrap(props.get(k)) for k in INPUT_FIELDS}
        return cls(
            shards=int(plain["shards"]),
            replicas_per_shard=int(plain["replicas_per_shard"]),
            password=str(plain["password"]),
            transport=str(plain["transport"]),
            kubeconfig=plain.get("kubeconfig") or None,
            namespace=plain.get("namespace") or None,
            stateful_set_name=plain.get("stateful_set_name") or None,
            pod_selector=plain.get("pod_selector") or None,
            nodes=tuple(dict(n) for n in (plain.get("nodes") or ())),
            ready_timeout_seconds=int(plain.get("ready_timeout_seconds") or DEFAULT_READY_TIMEOUT),
            # Stacks from before the engine setting ran Redis.
            engine=str(plain.get("engine") or DEFAULT_ENGINE),
            credentials=_credentials(str(plain["password"]), plain.get("credentials")),
            tls_ca=plain.get("tls_ca") or None,
            tls_secret=plain.get("tls_secret") or None,
            rotation_grace_seconds=int(plain.get("rotation_grace_seconds") or 0),
        )


def _credentials(password: str, given: Any) -> tuple[Credential, ...]:
    """The users the nodes should hold; none given (a caller that does not manage users,
    such as a bootstrap of an older program version until its next update): leave them as
    they are."""
    if not given:
        return ()
    found = tuple(
        Credential(str(c["name"]), tuple(str(p) for p in c["passwords"]), tuple(str(r) for r in c["rules"]))
        for c in given
    )
    if found[0].name != ADMIN_USER or password not in found[0].passwords:
        raise ValueError("credentials: the first user must be the admin, with the password input")
    return found


def _whole(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def validate(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems with the inputs as (property, reason); unknown values are not judged."""
    failures: list[tuple[str, str]] = []

    def get(key: str) -> Any:
        return unwrap(props.get(key))

    def known(key: str) -> bool:
        return not is_unknown(props.get(key))

    shards = _whole(get("shards")) if known("shards") else None
    if known("shards") and (shards is None or not MIN_SHARDS <= shards <= MAX_SHARDS):
        failures.append(("shards", f"expected a whole number from {MIN_SHARDS} to {MAX_SHARDS}"))
    replicas = _whole(get("replicas_per_shard")) if known("replicas_per_shard") else None
    if known("replicas_per_shard") and (replicas is None or not 0 <= replicas <= MAX_REPLICAS_PER_SHARD):
        failures.append(("replicas_per_shard", f"expected a whole number from 0 to {MAX_REPLICAS_PER_SHARD}"))
    if known("password") and (not isinstance(get("password"), str) or not get("password")):
        failures.append(("password", "expected a non-empty string (set as a secret)"))
    timeout = get("ready_timeout_seconds")
    if known("ready_timeout_seconds") and timeout is not None and (_whole(timeout) is None or _whole(timeout) < 1):
        failures.append(("ready_timeout_seconds", "expected a positive whole number of seconds"))
    credentials = get("credentials")
    if known("credentials") and credentials is not None and not _credentials_shape_ok(credentials):
        failures.append(("credentials", "expected a list of {name, passwords, rules}, the admin (default) first"))
    tls_ca = get("tls_ca")
    if known("tls_ca") and tls_ca is not None and "BEGIN CERTIFICATE" not in str(tls_ca):
        failures.append(("tls_ca", "expected the cluster CA's certificate in PEM"))
    if known("engine") and get("engine") is not None and get("engine") not in ENGINES:
        failures.append(("engine", "expected one of " + ", ".join(ENGINES)))
    transport = get("transport")
    if known("transport") and transport not in TRANSPORTS:
        failures.append(("transport", "expected one of " + ", ".join(TRANSPORTS)))
    if transport == "kubernetes":
        for key in ("namespace", "stateful_set_name"):
            if known(key) and not get(key):
                failures.append((key, "required with the kubernetes transport"))
    if transport == "direct" and known("nodes"):
        nodes = get("nodes")
        if not isinstance(nodes, (list, tuple)) or not nodes:
            failures.append(("nodes", "required with the direct transport: a list of {pod, host, port, zone}"))
        else:
            for i, node in enumerate(nodes):
                if not isinstance(node, Mapping) or not node.get("pod") or not node.get("host"):
                    failures.append(("nodes", f"entry {i} needs at least pod and host"))
                    break
            else:
                if shards is not None and replicas is not None and len(nodes) < shards * (1 + replicas):
                    failures.append(
                        (
                            "nodes",
                            f"{shards} shards with {replicas} replica(s) need {shards * (1 + replicas)} nodes, "
                            f"{len(nodes)} given",
                        )
                    )
    return failures


def _credentials_shape_ok(value: Any) -> bool:
    if not isinstance(value, (list, tuple)) or not value:
        return False
    for item in value:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            return False
        if not isinstance(item.get("passwords"), (list, tuple)) or not item["passwords"]:
            return False
        if not all(isinstance(p, str) and p for p in item["passwords"]):
            return False
        if not isinstance(item.get("rules"), (list, tuple)):
            return False
    return value[0].get("name") == ADMIN_USER


def accepted_changes(news: Mapping[str, Any]) -> set[str]:
    """What the operator's acceptManualChange names, e.g. {"shards=3", "password"}."""
    accepted = unwrap(news.get("accept_manual_change"))
    if is_unknown(accepted) or not isinstance(accepted, (list, tuple)):
        return set()
    return {str(item) for item in accepted}


def scale_in_message(current: int, wanted: int, what: str) -> str:
    return (
        f"{what} is {wanted}, but {current} masters hold slots: the scale-in step (ClusterScaleIn, before the "
        "StatefulSet) empties the pods that go before they go, and has not done so here (its `pulumi up` failed, "
        "or the pods were changed by hand since). Run `pulumi up` again: it plans from what the nodes say now "
        "(docs/operations.md, Scale in)"
    )


def operator_message(error: BootstrapError) -> str:
    """The cluster logic's refusal, with what to do about it in this program's terms."""
    if isinstance(error, ScaleInRefused):
        return scale_in_message(error.current, error.wanted, error.what)
    if isinstance(error, ForeignNodes) and error.failed_and_slotless:
        return (
            f"{error}: `pulumi refresh` and then `pulumi up` join such a pod again "
            "(see docs/operations.md, A pod lost its volume)"
        )
    if isinstance(error, UnexpectedCluster):
        return f"{error}. Set shards/replicasPerShard to match it, or reshape it by hand first"
    return str(error)


@contextmanager
def open_transport(spec: BootstrapSpec) -> Iterator[Any]:
    """The transport to the nodes, closed at the end; with TLS, the CA in a file of its own
    for as long as the transport lives (redis-py and the CLI read it from a file)."""
    with tempfile.TemporaryDirectory(prefix="redis-eks-tls-") as scratch:
        ca_file = os.path.join(scratch, "ca.crt")
        transport = make_transport(spec)
        try:
            ca = spec.tls_ca
            if not ca and spec.tls_secret and spec.transport == "kubernetes":
                ca = transport.secret_value(spec.tls_secret, "ca.crt", spec.ready_timeout_seconds)
            if ca:
                with open(ca_file, "w") as handle:
                    handle.write(ca)
                transport.use_tls(TlsOptions(ca_file))
            yield transport
        finally:
            transport.close()


def make_transport(spec: BootstrapSpec) -> Any:
    if spec.transport == "direct":
        return DirectTransport(spec.nodes, spec.password, cli=ENGINES[spec.engine].cli)
    try:
        return KubernetesTransport.from_kubeconfig(
            spec.kubeconfig,
            cli=ENGINES[spec.engine].cli,
            namespace=spec.namespace,
            stateful_set_name=spec.stateful_set_name,
            pod_selector=spec.pod_selector,
            password=spec.password,
        )
    except Exception as error:  # noqa: BLE001 - parser messages quote the (secret) text
        raise ValueError(f"the kubeconfig input could not be loaded ({type(error).__name__})") from None


def previous_passwords(olds: Mapping[str, Any], spec: BootstrapSpec) -> list[str]:
    """The admin passwords of the last successful run that differ from the new one: what
    a node that has not taken the new one yet still accepts."""
    old = unwrap(olds.get("password"))
    return [old] if isinstance(old, str) and old and old != spec.password else []


def previous_credentials(olds: Mapping[str, Any]) -> list[Credential]:
    """The users of the last successful run: their passwords stay valid until retired."""
    password = unwrap(olds.get("password"))
    if not isinstance(password, str) or not password:
        return []
    try:
        found = list(_credentials(password, unwrap(olds.get("credentials"))))
    except (KeyError, TypeError, ValueError):
        found = []
    # A run that did not manage users still had its admin password.
    return found or list(wanted_credentials(password))


def finish_rotation(
    transport: Any,
    spec: BootstrapSpec,
    previous: Sequence[str],
    deadline_at: float,
    previous_users: Sequence[Credential] = (),
) -> None:
    """Makes every node hold exactly the wanted users: admits them where a node missed it
    (it restarted with the old Secret, or was down), keeps the previous passwords valid
    through the grace period (a pod that restarted from the new Secret gets them back),
    waits until every pod's mounted Secret is the new one (its probes read it), then
    retires the old passwords and users. A node that cannot be reached keeps what it has,
    and refresh reports it (state "rotating")."""
    if not spec.credentials:
        return
    report = converge_credentials(
        transport, spec.pod_count, spec.credentials, previous, retire=False, also_accept=previous_users
    )
    if report.complete:
        return
    rotating = bool(previous) or any(report.pending.values())
    if report.unreachable and not rotating:
        # Nothing to take away: a pod out of reach now starts from the Secret anyway.
        log.warning("users not checked on %s (unreachable)", ", ".join(report.unreachable))
        return
    if report.unreachable:
        raise BootstrapError(
            "cannot update the users of " + ", ".join(report.unreachable) + "; the previous passwords stay valid "
            "until the next `pulumi up` reaches every pod"
        )
    grace = spec.rotation_grace_seconds
    if time.monotonic() + grace > deadline_at:
        raise BootstrapError(
            f"the rotation's grace period ({grace}s) does not fit in bootstrapTimeoutSeconds; raise it"
        )
    log.info("both passwords are valid; the previous ones are removed in %ss", grace)
    time.sleep(grace)
    _wait_for_mounted_secret(transport, spec, deadline_at)
    report = converge_credentials(transport, spec.pod_count, spec.credentials, previous, retire=True)
    if not report.complete:
        raise BootstrapError("the previous passwords could not be removed everywhere: " + "; ".join(report.problems()))


def _wait_for_mounted_secret(transport: Any, spec: BootstrapSpec, deadline_at: float) -> None:
    """Until every running pod's scripts read the new admin password: removing the old one
    before would fail their probes (an empty Service) until the kubelet caught up."""
    wanted = password_hash(spec.password)
    while True:
        lagging = []
        for node in transport.running_nodes(spec.pod_count):
            try:
                mounted = transport.mounted_password_hash(node)
            except TransportError as error:
                # Out of reach for now (a pod restarting, a refused exec): not known to read the
                # new password, so waited for like one that does not, until the deadline.
                lagging.append(f"{node.pod} ({error})")
                continue
            if mounted not in (None, wanted):
                lagging.append(node.pod)
        if not lagging:
            return
        if time.monotonic() > deadline_at:
            raise BootstrapError(
                "the new Secret has not reached " + ", ".join(lagging) + " yet; the previous passwords stay "
                "valid; run `pulumi up` again"
            )
        time.sleep(5)


def resource_id(spec: BootstrapSpec) -> str:
    if spec.transport == "kubernetes":
        return f"kubernetes/{spec.namespace}/{spec.stateful_set_name}"
    first = sorted(spec.nodes, key=lambda n: str(n.get("pod")))[0]
    digest = hashlib.sha256(f"{first.get('host')}:{first.get('port', 6379)}".encode()).hexdigest()[:12]
    return f"direct/{digest}"


def _outputs(props: Mapping[str, Any], topology: Mapping[str, Any]) -> dict[str, Any]:
    outs = {k: props[k] for k in INPUT_FIELDS if props.get(k) is not None}
    for key in SECRET_FIELDS:
        if key in outs:
            outs[key] = as_secret(unwrap(outs[key]))
    for key in OUTPUT_FIELDS:
        outs[key] = topology.get(key)
    return outs


def scrub(message: str, secrets: Sequence[Optional[str]]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "[secret]")
    return message


@contextmanager
def reported(*secrets: Optional[str]) -> Iterator[None]:
    """Re-raises a refusal of the cluster logic in this program's terms, and any failure
    whose message quotes a secret with the secret cut out (and without the original
    exception chained, which the provider server would print)."""
    try:
        yield
    except BootstrapError as error:
        raise BootstrapError(scrub(operator_message(error), secrets)) from None
    except Exception as error:
        message = str(error) or type(error).__name__
        if scrub(message, secrets) == message:
            raise
        raise RuntimeError(scrub(message, secrets)) from None


def secrets_of(spec: BootstrapSpec) -> list[Optional[str]]:
    return [spec.password, spec.kubeconfig, *(p for c in spec.credentials for p in c.passwords)]


def _known_pods(props: Mapping[str, Any]) -> dict[str, str]:
    """Node ID -> pod from the stored outputs, to name nodes that are down now. node_ids
    (what each node said of itself) wins over the masters/replicas lists."""
    found = {}
    for group in ("masters", "replicas"):
        for item in unwrap(props.get(group)) or []:
            if isinstance(item, Mapping) and item.get("id") and item.get("pod"):
                found[str(item["id"])] = str(item["pod"])
    node_ids = unwrap(props.get("node_ids"))
    if isinstance(node_ids, Mapping):
        found.update({str(k): str(v) for k, v in node_ids.items()})
    return found


# ---------------------------------------------------------------------------------------
# The provider.
# ---------------------------------------------------------------------------------------


class ClusterBootstrapProvider(pulumi.dynamic.ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = dict(news)
        if inputs.get("ready_timeout_seconds") is None:
            inputs["ready_timeout_seconds"] = DEFAULT_READY_TIMEOUT
        failures = validate(inputs)
        return CheckResult(inputs, [CheckFailure(p, r) for p, r in failures])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = []
        for key in INPUT_FIELDS:
            if key == "accept_manual_change":
                # Only a permission: setting or clearing it changes nothing on the nodes.
                continue
            new, old = news.get(key), olds.get(key)
            if key == "engine" and not is_unknown(new):
                # Stacks from before the engine setting ran Redis: no engine is Redis.
                old, new = unwrap(old) or DEFAULT_ENGINE, unwrap(new) or DEFAULT_ENGINE
            if is_unknown(new) or unwrap(old) != unwrap(new):
                changed.append(key)
        replaces = [k for k in changed if k in REPLACE_FIELDS and olds.get(k) is not None]
        # Drift seen by refresh (a failed node, a lost replica, open slots) makes
        # `pulumi up` run an update, which converges what can be converged.
        drift = olds.get("state") not in (None, "ok")
        return DiffResult(changes=bool(changed) or drift, replaces=replaces, delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        spec = BootstrapSpec.from_props(props)
        started = time.monotonic()
        with reported(*secrets_of(spec)), open_transport(spec) as transport:
            topology = ensure_cluster(
                transport, spec.shards, spec.replicas_per_shard, spec.ready_timeout_seconds, mode="create"
            )
            finish_rotation(transport, spec, [], started + spec.ready_timeout_seconds)
        return CreateResult(resource_id(spec), _outputs(props, topology))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        spec = BootstrapSpec.from_props(news)
        started = time.monotonic()
        previous = previous_passwords(olds, spec)
        old_users = previous_credentials(olds)
        old_secrets = [p for c in old_users for p in c.passwords]
        with reported(*secrets_of(spec), *previous, *old_secrets), open_transport(spec) as transport:
            # First every node takes the new users: a pod that restarted before the Secret
            # changed knows only the old password, and the cluster logic logs in with the new.
            if spec.credentials:
                converge_credentials(
                    transport, spec.pod_count, spec.credentials, previous, retire=False, also_accept=old_users
                )
            topology = ensure_cluster(
                transport,
                spec.shards,
                spec.replicas_per_shard,
                spec.ready_timeout_seconds,
                mode="update",
                known_pods=_known_pods(olds),
            )
            finish_rotation(transport, spec, previous, started + spec.ready_timeout_seconds, previous_credentials(olds))
        return UpdateResult(_outputs(news, topology))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        spec = BootstrapSpec.from_props(props)
        try:
            with open_transport(spec) as transport:
                topology = read_topology(transport, spec.shards, spec.replicas_per_shard, _known_pods(props))
                pending = (
                    read_credentials(transport, spec.pod_count, spec.credentials).problems() if spec.credentials else []
                )
            if pending:
                # A half-finished rotation: old passwords or users still accepted somewhere.
                # Any state but ok makes the next `pulumi up` update, which finishes it.
                topology["problems"] = list(topology.get("problems") or []) + pending
                if topology.get("state") == "ok":
                    topology["state"] = "rotating"
        except Exception as error:  # noqa: BLE001 - refresh reports, it does not fail
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            if scrub(message, secrets_of(spec)) != message:
                message = type(error).__name__
            topology = {
                "state": "unreachable",
                "node_count": 0,
                "masters": [],
                "replicas": [],
                "placement": unwrap(props.get("placement")) or {},
                "problems": [f"cannot read the cluster: {message}"],
                "node_ids": _known_pods(props),
            }
        return ReadResult(id_, _outputs(props, topology))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # Forgetting is all: the nodes and their data stay as they are.
        return None


def reach_props(args: ClusterBootstrapArgs) -> dict[str, Any]:
    """The inputs that say which pods hold the cluster and how to reach them (the shape, the
    transport, the admin password and the kubeconfig as secrets): what every provider that
    talks to the nodes takes."""
    return {
        "shards": args.shards,
        "replicas_per_shard": args.replicas_per_shard,
        "password": pulumi.Output.secret(args.password),
        "transport": args.transport,
        "kubeconfig": None if args.kubeconfig is None else pulumi.Output.secret(args.kubeconfig),
        "namespace": args.namespace,
        "stateful_set_name": args.stateful_set_name,
        "pod_selector": args.pod_selector,
        "nodes": args.nodes
        if args.nodes is None or isinstance(args.nodes, pulumi.Output)
        else [dict(n) for n in args.nodes],
        "ready_timeout_seconds": args.ready_timeout_seconds,
        "engine": args.engine,
        "tls_ca": args.tls_ca,
        "tls_secret": args.tls_secret,
    }


class ClusterBootstrap(pulumi.dynamic.Resource, module="redis", name="ClusterBootstrap"):
    """Forms the Redis Cluster once the StatefulSet's pods are ready, and keeps it in the
    configured shape (scale out on update, drift on refresh)."""

    state: pulumi.Output[str]
    node_count: pulumi.Output[int]
    masters: pulumi.Output[list]
    replicas: pulumi.Output[list]
    placement: pulumi.Output[dict]
    problems: pulumi.Output[list]
    node_ids: pulumi.Output[dict]

    def __init__(
        self,
        resource_name: str,
        args: ClusterBootstrapArgs,
        opts: Optional[pulumi.ResourceOptions] = None,
    ) -> None:
        props: dict[str, Any] = {
            **reach_props(args),
            "accept_manual_change": list(args.accept_manual_change),
            "credentials": None if args.credentials is None else pulumi.Output.secret(args.credentials),
            "rotation_grace_seconds": args.rotation_grace_seconds,
        }
        props.update({key: None for key in OUTPUT_FIELDS})
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=list(SECRET_FIELDS)))
        super().__init__(ClusterBootstrapProvider(), resource_name, props, opts)


# ---------------------------------------------------------------------------------------
# The guard: refuses unsafe changes before the Secret and the StatefulSet see them.
# ---------------------------------------------------------------------------------------

GUARD_FIELDS = (
    "shards",
    "replicas_per_shard",
    "engine",
    "image",
    "tls",
    "namespace",
    "storage_size",
    "certificate_issuer",
    "scale_in_step",
)
# The opt-ins (acceptManualChange items) that have let a change through and are still
# listed: each lets one change through, so a stale one cannot pass a second.
USED_FIELD = "used_manual_changes"
STORAGE_SIZE_MESSAGE = (
    "redis-eks:storageSize = {value!r} is refused on this running stack: a StatefulSet's claim templates "
    "cannot change, so the StatefulSet would be replaced, and the running pods' claims keep their size "
    "anyway. Grow each claim first (`kubectl patch pvc data-redis-cluster-<n> -n <namespace> -p "
    '\'{{"spec":{{"resources":{{"requests":{{"storage":"{value}"}}}}}}}}\'`: the StorageClass allows '
    "expansion), then set it together with redis-eks:acceptManualChange storageSize={value} for one "
    "`pulumi up`: the StatefulSet object is made again and takes over the running pods without restarting "
    "them (it orphans them when deleted); remove acceptManualChange afterwards (docs/operations.md, "
    '"Volume size")'
)
CERTIFICATE_ISSUER_MESSAGE = (
    "redis-eks:certManagerIssuer = {value!r} is refused on this running stack: the nodes' certificate and "
    "CA would change under every pod at once (each pod's kubelet swaps the Secret's files on its own "
    "schedule, and a node verifies its peers against its own ca.crt, so the cluster bus splits until all "
    "have the new files), and the old Secret, of the same name, would be deleted after cert-manager wrote "
    "it. Keep it; to move to another CA, deploy a new stack with the setting you want and move the data "
    'to it (docs/operations.md, "Certificates")'
)
TLS_CHANGE_MESSAGE = (
    "redis-eks:tls cannot change on a running stack: pods roll one at a time, and a TLS pod "
    "and a plaintext one cannot talk, so the cluster would split half way. Deploy a new "
    "stack with the setting you want and move the data to it (docs/known-limits.md)"
)


def namespace_change_failures(olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Another namespace replaces the Namespace object: a new, empty cluster in the new one,
    and the old one deleted with its pods and claims (the volumes stay, Retain). Only with
    `namespace=<new>` in acceptManualChange. A guard from before it held the namespace has
    nothing to compare."""
    old, new = unwrap(olds.get("namespace")), news.get("namespace")
    if not olds.get("shards") or not old or is_unknown(new) or unwrap(new) == old:
        return []
    new = unwrap(new)
    if f"namespace={new}" in accepted_changes(news):
        return []
    return [
        (
            "namespace",
            f"redis-eks:namespace cannot go from {old!r} to {new!r} on a running stack: the program would "
            f"create a new, empty cluster in {new!r} and delete {old!r} with its pods and claims (the volumes "
            "stay, unattached). Keep the namespace, or deploy a new stack and move the data; to replace the "
            f"cluster all the same, set redis-eks:acceptManualChange namespace={new} for one `pulumi up`",
        )
    ]


def engine_change_failures(olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Another engine, or an older line of the same one, than the running pods'. A guard
    from before the engine setting held neither: that stack ran Redis, at a version it no
    longer says."""
    if not olds.get("shards") or any(is_unknown(news.get(key)) for key in ("engine", "image")):
        return []
    old_engine = unwrap(olds.get("engine")) or DEFAULT_ENGINE
    old_image = unwrap(olds.get("image"))
    new_engine, new_image = unwrap(news.get("engine")) or DEFAULT_ENGINE, unwrap(news.get("image"))
    new_version = image_version(new_image or "")
    if new_version is None:
        return []
    old_version = image_version(old_image) if old_image else None
    refusal = change_refusal(old_engine, old_version, new_engine, new_version)
    # An older image is let through once when the operator names it: an upgrade whose
    # image never started (a bad tag, a crash loop) has written nothing to go back from.
    if refusal is None or (old_engine == new_engine and f"image={new_image}" in accepted_changes(news)):
        return []
    key = "engine" if old_engine != new_engine else "image"
    value = new_engine if key == "engine" else new_image
    return [(key, f"redis-eks:{key} = {value!r} is refused on this running stack: {refusal}")]


def scale_in_before_the_step(olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Fewer shards or replicas on the first run of a stack from before the scale-in step:
    that run creates ClusterScaleIn, which has no shape of its own to compare and so empties
    nothing, while the StatefulSet would delete pods that hold slots."""
    if not olds.get("shards") or unwrap(olds.get("scale_in_step")):
        return []
    failures = []
    for key, setting in (("shards", "shards"), ("replicas_per_shard", "replicasPerShard")):
        old, new = unwrap(olds.get(key)), news.get(key)
        if old is None or new is None or is_unknown(new) or int(unwrap(new)) >= int(old):
            continue
        failures.append(
            (
                key,
                f"redis-eks:{setting} cannot go from {old} to {unwrap(new)} in the first `pulumi up` after the "
                "upgrade: that run creates the scale-in step (ClusterScaleIn), which empties the pods that go "
                f"from the run after it on. Keep {setting} at {old} for this run, then lower it "
                "(docs/operations.md, Upgrading a stack from the previous release)",
            )
        )
    return failures


def unsafe_change_failures(olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Changes that must not reach the pods: fewer shards or replicas, another engine or an
    older line of it, another namespace, TLS switched, a new storage size or another signer of
    the nodes' certificate. (A new password is rotated, see `CredentialRotation`.)"""
    failures = (
        engine_change_failures(olds, news)
        + namespace_change_failures(olds, news)
        + scale_in_before_the_step(olds, news)
    )
    # A guard from before the setting ran without TLS.
    old_tls, new_tls = bool(unwrap(olds.get("tls"))), news.get("tls")
    if olds.get("shards") and not is_unknown(new_tls) and old_tls != bool(unwrap(new_tls)):
        failures.append(("tls", TLS_CHANGE_MESSAGE))
    # Guards from before these fields stored none: the next update stores them.
    for key, message in (
        ("storage_size", STORAGE_SIZE_MESSAGE),
        ("certificate_issuer", CERTIFICATE_ISSUER_MESSAGE),
    ):
        old, new = unwrap(olds.get(key)), unwrap(news.get(key))
        if old is None or new is None or is_unknown(new) or old == new:
            continue
        if key == "certificate_issuer" and not (old_tls and unwrap(new_tls)):
            # Without TLS there is no certificate; turning it on or off is refused above.
            continue
        if key == "storage_size" and f"storageSize={new}" in accepted_changes(news):
            continue
        failures.append((key, message.format(value=new)))
    return failures


def _listed(value: Any) -> set[str]:
    value = unwrap(value)
    return {str(item) for item in value} if isinstance(value, (list, tuple)) else set()


def guarded_change(
    olds: Mapping[str, Any],
    news: Mapping[str, Any],
    failures_of: Callable[[Mapping[str, Any], Mapping[str, Any]], list[tuple[str, str]]] = unsafe_change_failures,
) -> tuple[list[tuple[str, str]], list[str]]:
    """The unsafe changes from `olds` to `news` (as `failures_of` judges them: this guard's or
    PlatformChangeGuard's), counting only opt-ins not used before, and the record of used
    opt-ins to keep: those used before and still listed, and those this change uses. An opt-in
    removed from the stack is forgotten, so it can be given again."""
    listed = accepted_changes(news)
    used_before = _listed(olds.get(USED_FIELD)) & listed
    fresh = {**news, "accept_manual_change": sorted(listed - used_before)}
    failures = base = failures_of(olds, fresh)
    if failures and used_before:
        with_stale = failures_of(olds, {**news, "accept_manual_change": sorted(listed)})
        if len(with_stale) < len(failures):
            spent = ", ".join(sorted(used_before))
            failures = [
                (
                    "accept_manual_change",
                    f"redis-eks:acceptManualChange {spent} was used by an earlier `pulumi up`; an opt-in lets one "
                    "change through: remove it, run `pulumi up`, then set it again for this change",
                ),
                *with_stale,
            ]
    used_now = {
        item
        for item in listed - used_before
        if len(failures_of(olds, {**fresh, "accept_manual_change": sorted(listed - used_before - {item})})) > len(base)
    }
    return failures, sorted(used_before | used_now)


class ClusterChangeGuardProvider(pulumi.dynamic.ResourceProvider):
    """Holds the cluster's shape, engine and namespace, and fails `check` on a change that
    would lose keys or split the cluster. The StatefulSet depends on it, so the refusal comes
    before it changes, with or without a preview. The opt-ins it let through are recorded in
    its inputs (what `check` returns is what the engine stores and hands back as `olds`)."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures, used = guarded_change(olds or {}, news)
        return CheckResult({**news, USED_FIELD: used}, [CheckFailure(p, r) for p, r in failures])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [
            k
            for k in (*GUARD_FIELDS, USED_FIELD)
            if is_unknown(news.get(k)) or unwrap(olds.get(k)) != unwrap(news.get(k))
        ]
        return DiffResult(changes=bool(changed))

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult("cluster-change-guard", _guard_outputs(props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        failures, used = guarded_change(olds, news)
        if failures:
            raise ValueError(failures[0][1])
        return UpdateResult({**_guard_outputs(news), USED_FIELD: used})


def _guard_outputs(props: Mapping[str, Any]) -> dict[str, Any]:
    return {key: props.get(key) for key in (*GUARD_FIELDS, USED_FIELD)}


class ClusterChangeGuard(pulumi.dynamic.Resource, module="redis", name="ClusterChangeGuard"):
    """Refuses scale-in before anything is changed, unless the operator accepts one they
    made by hand (`accept_manual_change`), refuses another engine or an older line of it
    (but for an image that never started, named in `accept_manual_change`), another
    namespace (but with `namespace=<new>` named), a new storage size (but once the claims
    were grown, when named), and another signer of the nodes' certificate on a TLS stack.
    Each opt-in lets one change through."""

    def __init__(
        self,
        resource_name: str,
        shards: pulumi.Input[int],
        replicas_per_shard: pulumi.Input[int],
        accept_manual_change: pulumi.Input[Sequence[str]] = (),
        engine: str = DEFAULT_ENGINE,
        image: Optional[str] = None,
        tls: bool = False,
        namespace: Optional[str] = None,
        storage_size: Optional[str] = None,
        certificate_issuer: Optional[str] = None,
        opts: Optional[pulumi.ResourceOptions] = None,
    ) -> None:
        props = {
            "shards": shards,
            "replicas_per_shard": replicas_per_shard,
            "accept_manual_change": list(accept_manual_change),
            "engine": engine,
            "image": image,
            "tls": tls,
            "namespace": namespace,
            "storage_size": storage_size,
            "certificate_issuer": certificate_issuer,
            # This release's guards run beside the scale-in step; a guard's record without
            # the mark is from before it (see scale_in_before_the_step).
            "scale_in_step": True,
            USED_FIELD: None,
        }
        super().__init__(ClusterChangeGuardProvider(), resource_name, props, opts)
