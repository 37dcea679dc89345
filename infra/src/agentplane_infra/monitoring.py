"""kube-prometheus-stack, the dashboards and rules of `dashboards/`, and the operator's monitors."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import pulumi
import pulumi_kubernetes as k8s

from agentplane_infra.config import ChartConfig
from agentplane_infra.kube import apply_manifest, resource_name
from agentplane_infra.manifests import (
    GRAFANA_DASHBOARD_LABEL,
    grafana_dashboards,
    load_manifests,
    object_key,
    prometheus_rules,
    yaml_files,
)

NAMESPACE = "monitoring"
RELEASE = "kube-prometheus-stack"


class MonitoringArgs(TypedDict):
    chart: ChartConfig
    dashboards: Path
    """`dashboards/`: Grafana dashboard JSON and Prometheus rule YAML found there are loaded."""
    monitors: Path
    """`operator/deploy/monitoring/`: the PodMonitor and ServiceMonitor of agent pods and the operator."""
    monitors_namespace: pulumi.Resource
    """The namespace the monitors are in (the operator's): they wait for it and for the chart's CRDs."""
    grafana_admin_password: pulumi.Input[str]


class Monitoring(pulumi.ComponentResource):
    objects: list[str]
    """`Kind/namespace/name` of the dashboards, rules and monitors applied."""
    release: pulumi.Resource
    """The chart's release: resources of its CRDs (ServiceMonitor, PrometheusRule) wait for it."""

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:monitoring:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = k8s.core.v1.Namespace(f"{name}-namespace", metadata={"name": NAMESPACE}, opts=child)
        admin_password = pulumi.Output.secret(args["grafana_admin_password"])
        self.release = k8s.helm.v3.Release(
            f"{name}-release",
            name=RELEASE,
            namespace=NAMESPACE,
            chart="kube-prometheus-stack",
            version=args["chart"].version,
            repository_opts={"repo": args["chart"].repository},
            values={
                "grafana": {
                    "adminPassword": admin_password,
                    "sidecar": {
                        "dashboards": {
                            "enabled": True,
                            "label": GRAFANA_DASHBOARD_LABEL,
                            "labelValue": "1",
                            "searchNamespace": "ALL",
                        }
                    },
                },
                "prometheus": {
                    "prometheusSpec": {
                        # Select every ServiceMonitor / PodMonitor / PrometheusRule, not only the chart's
                        # (their namespace selectors already default to every namespace).
                        "ruleSelectorNilUsesHelmValues": False,
                        "serviceMonitorSelectorNilUsesHelmValues": False,
                        "podMonitorSelectorNilUsesHelmValues": False,
                    }
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[namespace]),
        )
        objects = [
            *grafana_dashboards(args["dashboards"], NAMESPACE),
            *prometheus_rules(args["dashboards"], NAMESPACE, {"release": RELEASE}),
        ]
        after = pulumi.ResourceOptions(parent=self, depends_on=[self.release])
        for obj in objects:
            apply_manifest(resource_name(name, obj), obj, after)
        monitors = load_manifests(yaml_files(args["monitors"]))
        after_both = pulumi.ResourceOptions(
            parent=self, depends_on=[self.release, args["monitors_namespace"]]
        )
        for obj in monitors:
            apply_manifest(resource_name(name, obj), obj, after_both)
        self.objects = [object_key(o) for o in [*objects, *monitors]]
        self.register_outputs({"objects": self.objects})
