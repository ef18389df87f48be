"""The Prometheus configuration and alert rules, checked by Prometheus's own promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"


def promtool_run(promtool: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *arguments], cwd=MONITORING, capture_output=True, text=True, timeout=60)


def test_config_and_rules_are_valid(promtool: str) -> None:
    config = promtool_run(promtool, "check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool_run(promtool, "check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 10 rules found" in rules.stdout


@pytest.mark.slow
def test_every_alert_fires_and_stays_quiet_when_it_should(promtool: str) -> None:
    result = promtool_run(promtool, "test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = (MONITORING / "alerts.test.yml").read_text()
    alerts = (
        "CropsegServiceDown",
        "CropsegDependencyDown",
        "CropsegHighErrorRatio",
        "CropsegLoadShedding",
        "CropsegSegmentationLatencyHigh",
        "CropsegDriftDetected",
        "CropsegEstimatedIoUDrop",
        "CropsegDriftJobStale",
        "CropsegVolumeAlmostFull",
        "CropsegFieldsNotSegmented",
    )
    for alert in alerts:
        assert f"alertname: {alert}" in tested, f"{alert} has no promtool test"
        assert f"alert: {alert}" in (MONITORING / "alerts.yml").read_text()
