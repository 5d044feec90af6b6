"""The scale-in step's provider seam: when it scales in, what it refuses at preview, what the
preview shows, and which claims it names (the cluster logic itself: tests/unit/test_scale_in.py
and, against real servers, tests/integration/test_scaling.py)."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from pulumi.output import Unknown

from cluster_logic.scale_in import ScaleInPlan
from components import cluster_scale_in as si

PASSWORD = "a-password-0123456789-abcdefghij"


def props(shards: int, replicas: int = 1, **extra) -> dict:
    pods = [{"pod": f"redis-cluster-{i}", "host": f"10.0.0.{i + 1}", "port": 6379} for i in range(16)]
    return {
        "shards": shards,
        "replicas_per_shard": replicas,
        "password": PASSWORD,
        "transport": "direct",
        "nodes": pods,
        "stateful_set_name": "redis-cluster",
        **extra,
    }


@pytest.mark.parametrize(
    "old, new, going",
    [
        ((4, 1), (3, 1), (8, 3, 1)),
        ((3, 2), (3, 1), (9, 3, 1)),
        ((4, 2), (3, 1), (12, 3, 1)),
        ((3, 1), (4, 1), None),
        ((3, 1), (3, 1), None),
        ((3.0, 1.0), (2.0, 1.0), (6, 2, 1)),  # numbers arrive as floats on the wire
    ],
)
def test_it_scales_in_only_to_a_smaller_shape(old, new, going) -> None:
    assert si.shrinking(props(*old), props(*new)) == going


def test_unknown_shapes_at_preview_are_not_judged() -> None:
    assert si.shrinking(props(4), props(Unknown())) is None
    checked = si.ClusterScaleInProvider().check(props(4), props(Unknown()))
    assert list(checked.failures) == [] and checked.inputs["plan"] == []


def test_scaling_in_and_out_at_once_is_refused_at_preview() -> None:
    checked = si.ClusterScaleInProvider().check(props(4, 1), props(3, 2))
    assert [f.property for f in checked.failures] == ["shards"]
    assert "separate `pulumi up` runs" in checked.failures[0].reason


@contextmanager
def _no_transport(spec):
    yield object()


def test_the_preview_shows_the_plan_and_a_memory_refusal_fails_it(monkeypatch) -> None:
    plan = ScaleInPlan(
        keep=["redis-cluster-0"], moves=[("redis-cluster-1", "redis-cluster-0", [1, 2])], forget=["redis-cluster-1"]
    )
    monkeypatch.setattr(si, "open_transport", _no_transport)
    monkeypatch.setattr(si, "preview", lambda transport, count, shards, replicas, timeout: (plan, None))
    checked = si.ClusterScaleInProvider().check(props(4, 0), props(3, 0))
    assert list(checked.failures) == []
    assert checked.inputs["plan"] == plan.describe()
    assert si.ClusterScaleInProvider().diff("id", {**props(4, 0), "plan": []}, checked.inputs).changes is True
    monkeypatch.setattr(
        si, "preview", lambda *args: (plan, "the 1 masters that would stay cannot take the keys: 9.0 MiB")
    )
    refused = si.ClusterScaleInProvider().check(props(4, 0), props(3, 0))
    assert [f.property for f in refused.failures] == ["shards"] and "9.0 MiB" in refused.failures[0].reason


def test_a_cluster_unreachable_at_preview_is_planned_at_the_update(monkeypatch) -> None:
    def unreachable(spec):
        raise ConnectionError("no route to the API")

    monkeypatch.setattr(si, "open_transport", unreachable)
    checked = si.ClusterScaleInProvider().check(props(4), props(3))
    assert list(checked.failures) == []
    assert checked.inputs["plan"][0].startswith("planned when the update runs")


def test_the_update_runs_the_scale_in_and_names_the_claims_kept(monkeypatch) -> None:
    ran = []
    monkeypatch.setattr(si, "open_transport", _no_transport)
    monkeypatch.setattr(
        si, "shrink", lambda transport, count, shards, replicas, timeout: ran.append((count, shards, replicas))
    )
    provider = si.ClusterScaleInProvider()
    out = provider.update("id", {**props(5), "retained_claims": []}, props(4)).outs
    assert ran == [(10, 4, 1)]
    assert out["retained_claims"] == ["data-redis-cluster-8", "data-redis-cluster-9"]
    # Further in: the earlier claims stay named; out again: a claim back in use is not.
    out = provider.update("id", out, props(3)).outs
    assert ran[-1] == (8, 3, 1)
    assert out["retained_claims"] == [f"data-redis-cluster-{i}" for i in (8, 9, 6, 7)]
    out = provider.update("id", out, props(4)).outs
    assert len(ran) == 2 and out["retained_claims"] == ["data-redis-cluster-8", "data-redis-cluster-9"]
