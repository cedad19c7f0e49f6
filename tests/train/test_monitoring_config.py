"""The monitoring configs in infra/ agree with the training exporter: Prometheus scrapes the
exporter's default port, and the Grafana dashboard charts exactly the metrics it registers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from dreamer4.train.metrics import Exporter

INFRA = Path(__file__).resolve().parents[2] / "infra"
PROMETHEUS = INFRA / "prometheus" / "prometheus.yml"
DASHBOARD = INFRA / "grafana" / "dreamer4-training.json"
METRIC = re.compile(r"\bdreamer4_[a-z0-9_]+\b")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def registered() -> set[str]:
    exporter = Exporter("train_x", "127.0.0.1", None)
    try:
        exporter.update(
            3,
            {"loss": 1.0, "masked": 0.5},
            {
                "grad_norm": 1.0,
                "lr": 1e-3,
                "steps_per_second": 1.0,
                "samples_per_second": 8.0,
                "tokens_per_second": 100.0,
                "data_wait": 0.01,
                "gpu_memory": 123.0,
                "minutes": 2.5,
            },
            {"tokenizer/psnr_heldout": 25.0},
        )
        families = list(exporter.registry.collect())
    finally:
        exporter.close()
    # every gauge got a sample for stage train_x: the update above reached all of them
    for family in families:
        assert any(s.labels.get("stage") == "train_x" for s in family.samples), family.name
    return {family.name for family in families}


def panel_exprs(dashboard: dict) -> dict[int, list[str]]:
    return {p["id"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}


def names_in(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC.findall(expr)}


def test_prometheus_config_scrapes_exporter_and_pushgateway() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        name: [t for static in job["static_configs"] for t in static["targets"]]
        for name, job in jobs.items()
    }
    assert "127.0.0.1:9464" in targets["dreamer4-training"]
    assert "127.0.0.1:9091" in targets["pushgateway"]
    assert jobs["pushgateway"]["honor_labels"] is True


def test_exporter_registers_the_documented_metrics(registered: set[str]) -> None:
    assert "dreamer4_train_loss" in registered
    assert "dreamer4_train_step" in registered
    assert "dreamer4_train_wall_minutes" in registered
    assert len(registered) == 11


def test_dashboard_charts_only_registered_metrics(dashboard: dict, registered: set[str]) -> None:
    exprs = [e for panel in panel_exprs(dashboard).values() for e in panel]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = names_in(exprs)
    assert used, "no dreamer4_* metric found in the dashboard"
    assert used <= registered, f"not registered by Exporter: {sorted(used - registered)}"


def test_every_registered_metric_is_charted(dashboard: dict, registered: set[str]) -> None:
    charted = names_in([e for panel in panel_exprs(dashboard).values() for e in panel])
    assert registered <= charted, f"no dashboard panel for: {sorted(registered - charted)}"


def test_panels_are_well_formed(dashboard: dict) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in dashboard["panels"]:
        assert {"id", "type", "title", "gridPos", "targets", "datasource"} <= panel.keys()
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'stage=~"$stage"' in target["expr"], target["expr"]
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_dashboard_variables(dashboard: dict) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["stage"]["definition"] == "label_values(dreamer4_train_step, stage)"
    assert variables["stage"]["datasource"] == DATASOURCE
