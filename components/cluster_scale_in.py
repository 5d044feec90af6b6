"""`ClusterScaleIn`: the dynamic provider that, before the StatefulSet shrinks, empties the
pods a smaller shape removes (`cluster_logic.scale_in`), shows that plan at preview, and names
the claims the StatefulSet keeps for them."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import pulumi
import pulumi.dynamic
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, UpdateResult

from cluster_logic.errors import BootstrapError
from cluster_logic.scale_in import preview, shrink
from components.cluster_bootstrap import (
    INPUT_FIELDS,
    SECRET_FIELDS,
    BootstrapSpec,
    ClusterBootstrapArgs,
    _whole,
    is_unknown,
    open_transport,
    reach_props,
    reported,
    secrets_of,
    unwrap,
    validate,
)

# At preview the plan is read from the nodes; a cluster that cannot be reached then is planned
# at the update (the same plan, or a refusal before anything changes).
PREVIEW_TIMEOUT_SECONDS = 60
OUTPUT_FIELDS = ("retained_claims",)


def shape(props: Mapping[str, Any]) -> Optional[tuple[int, int]]:
    """(shards, replicas per shard), or None while unknown."""
    values = [props.get(key) for key in ("shards", "replicas_per_shard")]
    if any(is_unknown(v) for v in values):
        return None
    # Numbers arrive as floats on the wire.
    whole = [_whole(unwrap(v)) for v in values]
    if None in whole:
        return None
    return whole[0], whole[1]


def shrinking(olds: Mapping[str, Any], news: Mapping[str, Any]) -> Optional[tuple[int, int, int]]:
    """(pods now, shards, replicas per shard) when `news` is smaller than `olds`, else None."""
    old, new = shape(olds), shape(news)
    if old is None or new is None or new == old or (new[0] >= old[0] and new[1] >= old[1]):
        return None
    return old[0] * (1 + old[1]), new[0], new[1]


def mixed_change(olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[tuple[str, str]]:
    old, new = shape(olds), shape(news)
    if old is None or new is None:
        return []
    if (new[0] < old[0] and new[1] > old[1]) or (new[0] > old[0] and new[1] < old[1]):
        return [
            (
                "shards",
                f"redis-eks:shards {old[0]} -> {new[0]} and replicasPerShard {old[1]} -> {new[1]} at once: scale in and "
                "out in separate `pulumi up` runs (the pods that go are chosen by ordinal, and new ones would take "
                "their places)",
            )
        ]
    return []


def claims(props: Mapping[str, Any], first: int, end: int) -> list[str]:
    """The PersistentVolumeClaims of the StatefulSet's pods `first`..`end - 1`."""
    name = unwrap(props.get("stateful_set_name")) or "redis-cluster"
    return [f"data-{name}-{ordinal}" for ordinal in range(first, end)]


class ClusterScaleInProvider(pulumi.dynamic.ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = dict(news)
        failures = validate(inputs) + mixed_change(olds or {}, inputs)
        inputs["plan"] = []
        going = shrinking(olds or {}, inputs)
        if going and not failures and not any(is_unknown(inputs.get(k)) for k in INPUT_FIELDS):
            count, shards, replicas = going
            spec = BootstrapSpec.from_props(inputs)
            try:
                with reported(*secrets_of(spec)), open_transport(spec) as transport:
                    plan, refusal = preview(transport, count, shards, replicas, PREVIEW_TIMEOUT_SECONDS)
            except Exception as error:  # noqa: BLE001 - the update plans again, and refuses there
                inputs["plan"] = [f"planned when the update runs (the nodes could not be read now: {error})"]
            else:
                inputs["plan"] = plan.describe()
                if refusal:
                    failures.append(("shards", f"redis-eks:shards/replicasPerShard cannot scale in: {refusal}"))
        return CheckResult(inputs, [CheckFailure(p, r) for p, r in failures])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [
            key
            for key in ("shards", "replicas_per_shard", "plan")
            if is_unknown(news.get(key)) or unwrap(olds.get(key)) != unwrap(news.get(key))
        ]
        return DiffResult(changes=bool(changed))

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult("cluster-scale-in", {**props, "retained_claims": []})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        retained = list(unwrap(olds.get("retained_claims")) or [])
        going = shrinking(olds, news)
        refused = mixed_change(olds, news)
        if refused:
            raise BootstrapError(refused[0][1])
        if going:
            count, shards, replicas = going
            spec = BootstrapSpec.from_props(news)
            with reported(*secrets_of(spec)), open_transport(spec) as transport:
                shrink(transport, count, shards, replicas, spec.ready_timeout_seconds)
            retained += [c for c in claims(news, shards * (1 + replicas), count) if c not in retained]
        # A claim the StatefulSet takes again (a later scale-out) is no longer a leftover.
        now = shape(news)
        in_use = set(claims(news, 0, now[0] * (1 + now[1]))) if now else set()
        return UpdateResult({**news, "retained_claims": [c for c in retained if c not in in_use]})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


class ClusterScaleIn(pulumi.dynamic.Resource, module="redis", name="ClusterScaleIn"):
    """Empties and forgets the pods a smaller `shards`/`replicasPerShard` removes, before the
    StatefulSet (which depends on it) removes them; `retained_claims` names the claims the
    StatefulSet keeps for them (whenScaled: Retain)."""

    retained_claims: pulumi.Output[list]
    plan: pulumi.Output[list]

    def __init__(
        self, resource_name: str, args: ClusterBootstrapArgs, opts: Optional[pulumi.ResourceOptions] = None
    ) -> None:
        props: dict[str, Any] = {**reach_props(args), "plan": None, "retained_claims": None}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=list(SECRET_FIELDS)))
        super().__init__(ClusterScaleInProvider(), resource_name, props, opts)
