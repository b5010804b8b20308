"""The alerts on `upstream.protection` (deploy/base/prometheusrule.yaml) fire as meant, under
promtool, and the dashboard has the row for them."""

from __future__ import annotations

from pathlib import Path

from .test_deploy import alerts, dashboard_exprs, fires, promtool_passes, series

PAUSE_TESTS = {
    "rule_files": ["rules.yaml"],
    "evaluation_interval": "1m",
    "tests": [
        {
            "interval": "1m",
            "input_series": [
                # a pause renewed from minute 5 on; one short pause of 2 minutes on another
                series(
                    "gini_proxy_upstream_pause_seconds", "0x5 40x30", pod="a", upstream="pay_api"
                ),
                series(
                    "gini_proxy_upstream_pause_seconds",
                    "0x5 30 20 0x30",
                    pod="b",
                    upstream="user_center",
                ),
                # a breaker open (and probing) from minute 10 on
                series(
                    "gini_proxy_upstream_breaker_open", "0x10 1x25", pod="a", upstream="pay_api"
                ),
            ],
            "alert_rule_test": [
                fires("8m", "GiniProxyUpstreamPaused"),
                fires(
                    "15m",
                    "GiniProxyUpstreamPaused",
                    {"severity": "warning", "namespace": "ns", "upstream": "pay_api"},
                ),
                fires("11m", "GiniProxyUpstreamBreakerOpen"),
                fires(
                    "15m",
                    "GiniProxyUpstreamBreakerOpen",
                    {"severity": "critical", "namespace": "ns", "upstream": "pay_api"},
                ),
            ],
        }
    ],
}


def test_the_protection_alerts_exist() -> None:
    rules = alerts()
    assert "gini_proxy_upstream_pause_seconds" in rules["GiniProxyUpstreamPaused"]["expr"]
    assert "gini_proxy_upstream_breaker_open" in rules["GiniProxyUpstreamBreakerOpen"]["expr"]


def test_the_protection_alerts_fire(tmp_path: Path) -> None:
    promtool_passes(tmp_path, PAUSE_TESTS)


def test_the_dashboard_shows_pauses_breakers_and_shed_calls() -> None:
    exprs = "\n".join(dashboard_exprs())
    for metric in (
        "gini_proxy_upstream_pause_seconds",
        "gini_proxy_upstream_breaker_open",
        "gini_proxy_upstream_shed_total",
        "gini_proxy_upstream_retries_total",
    ):
        assert metric in exprs, metric
