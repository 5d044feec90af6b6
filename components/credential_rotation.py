"""`CredentialRotation`: a Pulumi dynamic resource that gives the running nodes the new
users and passwords *before* the Secret that restarting pods read changes.

Old and new passwords are both valid from then on; the bootstrap removes the old ones once
every node holds the new and the grace period is over (`cluster_bootstrap.finish_rotation`).
So a pod that restarts at any point starts with a password its peers and its master take:
before this resource ran, the old Secret and old passwords; after, either. It is the same
seam as the bootstrap (props to a spec, secrets kept secret, the cluster logic called) and
reuses its transport; like it, this module is pickled by reference and creates nothing at
import time.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

import pulumi
import pulumi.dynamic
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, UpdateResult

from cluster_logic.credentials import converge_credentials
from components.cluster_bootstrap import INPUT_FIELDS as BOOTSTRAP_INPUT_FIELDS
from components.cluster_bootstrap import (
    BootstrapSpec,
    as_secret,
    is_unknown,
    open_transport,
    previous_passwords,
    reported,
    secrets_of,
    unwrap,
    validate,
)

log = logging.getLogger(__name__)

SECRET_FIELDS = ("password", "kubeconfig", "credentials")
# The bootstrap's inputs but those about forming the cluster (timeouts, the opt-in, the grace).
INPUT_FIELDS = tuple(
    key
    for key in BOOTSTRAP_INPUT_FIELDS
    if key not in ("ready_timeout_seconds", "accept_manual_change", "rotation_grace_seconds")
)
# What a change of calls for a pass over the nodes; the others only say how to reach them.
ROTATED_FIELDS = ("password", "credentials")


class CredentialRotationProvider(pulumi.dynamic.ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [(p, r) for p, r in validate(news) if p in INPUT_FIELDS]
        return CheckResult(news, [CheckFailure(p, r) for p, r in failures])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [
            key for key in INPUT_FIELDS if is_unknown(news.get(key)) or unwrap(olds.get(key)) != unwrap(news.get(key))
        ]
        return DiffResult(changes=bool(changed))

    def create(self, props: dict[str, Any]) -> CreateResult:
        # A new stack has no pods yet (nothing to do); a stack from before this resource
        # has pods that lack the replication user and the named users: they get them now,
        # before a pod restarted with the new Secret logs in to its master as that user.
        self._admit(props, {})
        return CreateResult("credential-rotation", _outputs(props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if any(unwrap(olds.get(key)) != unwrap(news.get(key)) for key in ROTATED_FIELDS):
            self._admit(news, olds)
        return UpdateResult(_outputs(news))

    def _admit(self, props: Mapping[str, Any], olds: Mapping[str, Any]) -> None:
        spec = BootstrapSpec.from_props(_with_bootstrap_defaults(props))
        if not spec.credentials:
            return
        previous = previous_passwords(olds, spec)
        with reported(*secrets_of(spec), *previous), open_transport(spec) as transport:
            report = converge_credentials(transport, spec.pod_count, spec.credentials, previous, retire=False)
        if report.unreachable:
            # Such a pod restarts from the new Secret, or the bootstrap reaches it later.
            log.warning("could not give the new users to %s now", ", ".join(report.unreachable))


# How long to wait for a cert-manager issuer's first certificate (its CA is how the nodes
# are reached); a misconfigured issuer fails the deployment here, before any pod changes.
CA_WAIT_SECONDS = 300


def _with_bootstrap_defaults(props: Mapping[str, Any]) -> dict[str, Any]:
    return {**props, "ready_timeout_seconds": CA_WAIT_SECONDS}


def _outputs(props: Mapping[str, Any]) -> dict[str, Any]:
    outs = {key: props.get(key) for key in INPUT_FIELDS if props.get(key) is not None}
    for key in SECRET_FIELDS:
        if key in outs:
            outs[key] = as_secret(unwrap(outs[key]))
    return outs


class CredentialRotation(pulumi.dynamic.Resource, module="redis", name="CredentialRotation"):
    """Admits new users and passwords on the running nodes ahead of the Secret."""

    def __init__(
        self,
        resource_name: str,
        *,
        shards: pulumi.Input[int],
        replicas_per_shard: pulumi.Input[int],
        password: pulumi.Input[str],
        credentials: pulumi.Input[Sequence[Mapping[str, Any]]],
        transport: str,
        engine: str,
        kubeconfig: Optional[pulumi.Input[str]] = None,
        namespace: Optional[pulumi.Input[str]] = None,
        stateful_set_name: Optional[pulumi.Input[str]] = None,
        pod_selector: Optional[pulumi.Input[str]] = None,
        nodes: Optional[Sequence[Mapping[str, Any]]] = None,
        tls_ca: Optional[pulumi.Input[str]] = None,
        tls_secret: Optional[str] = None,
        opts: Optional[pulumi.ResourceOptions] = None,
    ) -> None:
        props = {
            "shards": shards,
            "replicas_per_shard": replicas_per_shard,
            "password": pulumi.Output.secret(password),
            "credentials": pulumi.Output.secret(credentials),
            "transport": transport,
            "kubeconfig": None if kubeconfig is None else pulumi.Output.secret(kubeconfig),
            "namespace": namespace,
            "stateful_set_name": stateful_set_name,
            "pod_selector": pod_selector,
            "nodes": None if nodes is None else [dict(n) for n in nodes],
            "engine": engine,
            "tls_ca": tls_ca,
            "tls_secret": tls_secret,
        }
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=list(SECRET_FIELDS)))
        super().__init__(CredentialRotationProvider(), resource_name, props, opts)
