"""What the Prometheus Operator needs to scrape the exporters and alert on them: a
ServiceMonitor and a PrometheusRule (monitoring: true; the operator's CRDs must exist)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components import metrics_exporter as exporter

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


def alert_rule_groups() -> list[dict]:
    """The alerting rules, as the file `promtool test rules` checks holds them."""
    return yaml.safe_load(exporter.ALERT_RULES_FILE.read_text())["groups"]


class ClusterMonitoring(pulumi.ComponentResource):
    """Prometheus scrapes every node's exporter and evaluates the cluster's alerts."""

    service_monitor_name: pulumi.Output[str]
    prometheus_rule_name: pulumi.Output[str]

    def __init__(self, resource_name: str, args: ClusterMonitoringArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("redis-eks:index:ClusterMonitoring", resource_name, None, opts)
        on_cluster = pulumi.ResourceOptions(parent=self, provider=args.provider)
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
            spec={"groups": alert_rule_groups()},
            opts=on_cluster,
        )
        self.service_monitor_name = service_monitor.metadata["name"]
        self.prometheus_rule_name = prometheus_rule.metadata["name"]
        self.register_outputs(
            {"service_monitor_name": self.service_monitor_name, "prometheus_rule_name": self.prometheus_rule_name}
        )
