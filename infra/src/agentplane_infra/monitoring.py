"""kube-prometheus-stack, the dashboards and rules of `dashboards/`, Alertmanager's routing, and
the operator's monitors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from agentplane_infra.config import SEVERITIES, AlertingConfig, ChartConfig, Severity
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
NULL_RECEIVER = "null"
"""Alertmanager's receiver without integrations: what it is sent to goes nowhere."""

# How long Alertmanager waits to batch a new group's first alerts, and then its changes: a page
# goes out fast, tickets are batched.
_GROUP_WAIT: Mapping[Severity, str] = {"page": "30s", "ticket": "5m"}
_GROUP_INTERVAL: Mapping[Severity, str] = {"page": "5m", "ticket": "30m"}


def alertmanager_config(
    receivers: Mapping[Severity, pulumi.Input[str]], alerting: AlertingConfig
) -> dict[str, Any]:
    """kube-prometheus-stack's `alertmanager.config`: each severity to its receiver's webhook.

    `severity="page"` and `severity="ticket"` each get a route to the receiver of that name, grouped
    by `alerting.group_by`, repeated every `alerting.<severity>_repeat_interval`; a severity without
    a receiver, and every other alert, goes to the `null` receiver. While pages go somewhere, a page
    inhibits the tickets of the same SLO (same `service`, `slo`, `tenant` and `agent`): the slow burn of an
    objective already paged for is not ticketed too. The receivers' URLs are placed as given (secret
    Outputs stay secret).
    """
    repeat: Mapping[Severity, str] = {
        "page": alerting.page_repeat_interval,
        "ticket": alerting.ticket_repeat_interval,
    }
    routes = [
        {
            "receiver": severity if severity in receivers else NULL_RECEIVER,
            "matchers": [f'severity="{severity}"'],
            "group_wait": _GROUP_WAIT[severity],
            "group_interval": _GROUP_INTERVAL[severity],
            "repeat_interval": repeat[severity],
        }
        for severity in SEVERITIES
    ]
    inhibit_rules = (
        [
            {
                "source_matchers": ['severity="page"', 'slo=~".+"'],
                "target_matchers": ['severity="ticket"'],
                "equal": ["service", "slo", "tenant", "agent"],
            }
        ]
        if "page" in receivers
        else []
    )
    return {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": NULL_RECEIVER,
            "group_by": list(alerting.group_by),
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "12h",
            "routes": routes,
        },
        "inhibit_rules": inhibit_rules,
        "receivers": [
            {"name": NULL_RECEIVER},
            *(
                {"name": severity, "webhook_configs": [{"url": receivers[severity], "send_resolved": True}]}
                for severity in SEVERITIES
                if severity in receivers
            ),
        ],
    }


class MonitoringArgs(TypedDict):
    chart: ChartConfig
    dashboards: Path
    """`dashboards/`: Grafana dashboard JSON and Prometheus rule YAML found there are loaded."""
    monitors: Path
    """`operator/deploy/monitoring/`: the PodMonitor and ServiceMonitor of agent pods and the operator."""
    monitors_namespace: pulumi.Resource
    """The namespace the monitors are in (the operator's): they wait for it and for the chart's CRDs."""
    grafana_admin_password: pulumi.Input[str]
    alerting: AlertingConfig
    alert_receivers: Mapping[Severity, pulumi.Input[str]]
    """Severity -> webhook URL (a secret: it carries a token)."""


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
        receivers = {severity: pulumi.Output.secret(url) for severity, url in args["alert_receivers"].items()}
        self.release = k8s.helm.v3.Release(
            f"{name}-release",
            name=RELEASE,
            namespace=NAMESPACE,
            chart="kube-prometheus-stack",
            version=args["chart"].version,
            repository_opts={"repo": args["chart"].repository},
            values={
                "alertmanager": {"config": alertmanager_config(receivers, args["alerting"])},
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
