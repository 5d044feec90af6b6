"""The Prometheus Operator's CustomResourceDefinitions that `monitoring: true` needs
(ServiceMonitor, PrometheusRule), vendored unchanged from one pinned release, for a cluster
that runs no Prometheus Operator of its own (`prometheusOperatorCrds: install`).

The files in components/crds/ are example/prometheus-operator-crd/monitoring.coreos.com_*.yaml
of github.com/prometheus-operator/prometheus-operator at the tag below, as they are; each
carries the release in its `operator.prometheus.io/version` annotation. tests/schemas/ holds
their openAPIV3Schema for the unit tests' validation, from the same release.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components.stack_settings import PROMETHEUS_OPERATOR_CRD_MODES

PROMETHEUS_OPERATOR_RELEASE = "v0.93.0"
PROMETHEUS_OPERATOR_COMMIT = "f8fafd475f3d132e239432ae6172de60a6cb6516"
CRD_DIR = Path(__file__).resolve().parent / "crds"
CRD_FILES = ("monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml")
# `prometheusOperatorCrds`: the stack installs the CRDs above, or the cluster has them already
# (a Prometheus Operator of its own, e.g. kube-prometheus-stack), and nothing is installed.
INSTALL, EXISTING = PROMETHEUS_OPERATOR_CRD_MODES


@functools.cache
def crd_documents() -> tuple[dict, ...]:
    """The vendored CRDs, as the files hold them."""
    return tuple(yaml.safe_load((CRD_DIR / name).read_text()) for name in CRD_FILES)


def install_crds(
    resource_name: str, provider: k8s.Provider, parent: pulumi.Resource
) -> list[k8s.apiextensions.v1.CustomResourceDefinition]:
    """One CustomResourceDefinition per vendored file.

    Kept on delete: removing a CRD removes every object of its kind in the whole cluster,
    other teams' ServiceMonitors and PrometheusRules included, so neither `pulumi destroy` nor
    a move to `prometheusOperatorCrds: existing` deletes them; the stack only forgets them."""
    crds = []
    for document in crd_documents():
        spec = document["spec"]
        crds.append(
            k8s.apiextensions.v1.CustomResourceDefinition(
                f"{resource_name}-crd-{spec['names']['plural']}",
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=document["metadata"]["name"], annotations=document["metadata"]["annotations"]
                ),
                spec=k8s.apiextensions.v1.CustomResourceDefinitionSpecArgs(
                    group=spec["group"],
                    scope=spec["scope"],
                    names=k8s.apiextensions.v1.CustomResourceDefinitionNamesArgs(
                        kind=spec["names"]["kind"],
                        list_kind=spec["names"]["listKind"],
                        plural=spec["names"]["plural"],
                        singular=spec["names"]["singular"],
                        short_names=spec["names"].get("shortNames"),
                        categories=spec["names"].get("categories"),
                    ),
                    versions=[
                        k8s.apiextensions.v1.CustomResourceDefinitionVersionArgs(
                            name=version["name"],
                            served=version["served"],
                            storage=version["storage"],
                            # The schema exactly as the release wrote it.
                            schema=k8s.apiextensions.v1.CustomResourceValidationArgs(
                                open_apiv3_schema=version["schema"]["openAPIV3Schema"]
                            ),
                            subresources=version.get("subresources"),
                        )
                        for version in spec["versions"]
                    ],
                ),
                opts=pulumi.ResourceOptions(parent=parent, provider=provider, retain_on_delete=True),
            )
        )
    return crds
