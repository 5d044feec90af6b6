"""What the Prometheus Operator needs to scrape the exporters and alert on them: a
ServiceMonitor and a PrometheusRule (monitoring: true), and, unless the cluster has a
Prometheus Operator of its own, the two CRDs that define them (components/monitoring_crds.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from urllib.parse import urljoin

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components import metrics_exporter as exporter
from components.monitoring_crds import install_crds

MONITORING_API_VERSION = "monitoring.coreos.com/v1"


@dataclass(frozen=True)
class ClusterMonitoringArgs:
    namespace: pulumi.Input[str]
    # Both objects' name (the StatefulSet's).
    name: str
    # On both objects: the app's labels and those the Prometheus selects by.
    labels: dict[str, str]
    # The labels of the metrics Service, which the ServiceMonitor selects.
    service_selector: dict[str, str]
    provider: k8s.Provider
    # Install the ServiceMonitor and PrometheusRule CRDs (prometheusOperatorCrds: install), or
    # rely on the cluster's own (existing).
    install_crds: bool = True
    # The repository tree the alerts' runbook links lead into (runbookBaseUrl).
    runbook_base_url: Optional[str] = None


def alert_rule_groups(runbook_base_url: Optional[str] = None) -> list[dict]:
    """The alerting rules, as the file `promtool test rules` checks holds them; with a base URL,
    each rule's runbook_url (a path in this repository) made an absolute link under it, which
    Alertmanager and Grafana can follow (a relative one leads nowhere from their pages)."""
    groups = yaml.safe_load(exporter.ALERT_RULES_FILE.read_text())["groups"]
    if runbook_base_url:
        for group in groups:
            for rule in group.get("rules", []):
                annotations = rule.get("annotations") or {}
                if "runbook_url" in annotations:
                    annotations["runbook_url"] = urljoin(runbook_base_url, annotations["runbook_url"])
    return groups


class ClusterMonitoring(pulumi.ComponentResource):
    """Prometheus scrapes every node's exporter and evaluates the cluster's alerts."""

    service_monitor_name: pulumi.Output[str]
    prometheus_rule_name: pulumi.Output[str]

    def __init__(self, resource_name: str, args: ClusterMonitoringArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("redis-eks:index:ClusterMonitoring", resource_name, None, opts)
        # Both objects wait for the CRDs that define their kinds: the API server answers "no
        # matches for kind" until those are served.
        crds = install_crds(resource_name, args.provider, self) if args.install_crds else []
        on_cluster = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=crds)
        metadata = k8s.meta.v1.ObjectMetaArgs(name=args.name, namespace=args.namespace, labels=args.labels)
        service_monitor = k8s.apiextensions.CustomResource(
            f"{resource_name}-service-monitor",
            api_version=MONITORING_API_VERSION,
            kind="ServiceMonitor",
            metadata=metadata,
            spec={
                "selector": {"matchLabels": args.service_selector},
                "namespaceSelector": {"matchNames": [args.namespace]},
                "endpoints": [
                    {
                        "port": "metrics",
                        "path": exporter.METRICS_PATH,
                        # Fast enough to see a failover (node timeout 5 s) within a minute.
                        "interval": "15s",
                        "scrapeTimeout": "10s",
                    }
                ],
            },
            opts=on_cluster,
        )
        prometheus_rule = k8s.apiextensions.CustomResource(
            f"{resource_name}-rules",
            api_version=MONITORING_API_VERSION,
            kind="PrometheusRule",
            metadata=metadata,
            spec={"groups": alert_rule_groups(args.runbook_base_url)},
            opts=on_cluster,
        )
        self.service_monitor_name = service_monitor.metadata["name"]
        self.prometheus_rule_name = prometheus_rule.metadata["name"]
        self.register_outputs(
            {"service_monitor_name": self.service_monitor_name, "prometheus_rule_name": self.prometheus_rule_name}
        )
