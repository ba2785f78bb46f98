"""deploy/grafana/kimball-dashboard.json: a dashboard Grafana imports as it is (its
Prometheus data source chosen through the DS_PROMETHEUS variable), querying only metrics a
Kimball server's /metrics has."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from support.in_process import gateway_of, local_settings, rest_client, running

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "kimball-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Names the metrics work of this release adds (build info, events ingested and refused,
# the grpc-ecosystem server metrics), as queried: a server without them yet has the rest.
SHARED_NAMES = {
    "kimball_build_info",
    "kimball_events_ingested_total",
    "kimball_events_refused_total",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "grpc_server_handling_seconds_sum",
    "grpc_server_handling_seconds_count",
}
# What Prometheus stores of each kind of metric family, by the family's name.
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}
_NOT_NAMES = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_NOT_NAMES |= {"and", "or", "unless", "offset", "inf", "nan"}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel but rows, those inside collapsed rows too."""
    found = []
    for panel in dashboard["panels"]:
        found += [panel] if panel["type"] != "row" else panel.get("panels", [])
    return found


def queries(dashboard: dict) -> list[str]:
    """Every PromQL expression: the panels' and the template variables'."""
    exprs = [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a label_values() query) reads."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings: label values, regexes
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"label_values\(\s*([\w:]+)[^)]*\)", r"\1", text)  # its label is no metric
    names = re.findall(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text)
    return {name for name in names if name.lower() not in _NOT_NAMES}


def exposed_names(exposition: str) -> set[str]:
    """The series names a scrape of this /metrics text stores, including families that
    have no sample yet (a counter with labels before its first call)."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(exposition)
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def unknown_metrics(exprs: list[str], known: set[str]) -> dict[str, set[str]]:
    """Each expression that reads a metric outside ``known``, with those metrics."""
    return {expr: names - known for expr in exprs if (names := metric_names(expr)) - known}


def test_the_dashboard_is_json_grafana_imports_with_any_prometheus() -> None:
    dashboard = load()
    assert dashboard["title"] == "Kimball" and dashboard["uid"] == "kimball"
    [source] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert (source["name"], source["query"]) == ("DS_PROMETHEUS", "prometheus")
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"])
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24 and place["h"] > 0, panel["title"]


def test_the_dashboard_shows_the_main_figures() -> None:
    read = set().union(*map(metric_names, queries(load())))
    for name in (
        "kimball_events_ingested_total",
        "kimball_events_refused_total",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "kimball_http_requests_total",
        "kimball_http_request_duration_seconds_bucket",
        "process_resident_memory_bytes",
        "kimball_snapshot_duration_seconds_bucket",
        "kimball_snapshot_last_sequence",
        "kimball_wal_segments",
        "kimball_streams_open",
        "kimball_limit_refusals_total",
    ):
        assert name in read


async def test_every_metric_the_dashboard_reads_is_on_metrics_or_shared(tmp_path: Path) -> None:
    async with (
        running(local_settings(tmp_path)) as server,
        gateway_of(server) as gateway,
        rest_client(gateway) as http,
        http.get("/metrics") as response,
    ):
        assert response.status == 200
        exposition = await response.text()
    exposed = exposed_names(exposition)
    assert "kimball_http_requests_total" in exposed  # the scrape was read
    assert unknown_metrics(queries(load()), exposed | SHARED_NAMES) == {}


def test_the_check_reads_metric_names_and_finds_an_unknown_one() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, route) (rate(kimball_http_request_duration_"
        'seconds_bucket{job=~"$job", route!="a b"}[$__rate_interval]))) / on(instance) '
        "group_left kimball_nope_total offset 5m"
    )
    assert metric_names(expr) == {
        "kimball_http_request_duration_seconds_bucket",
        "kimball_nope_total",
    }
    assert metric_names('label_values(kimball_build_info{job=~"$job"}, instance)') == {
        "kimball_build_info"
    }
    assert metric_names("time() - max_over_time(timestamp(up > 0)[6h:1m])") == {"up"}
    known = {"kimball_http_request_duration_seconds_bucket"}
    assert unknown_metrics([expr], known) == {expr: {"kimball_nope_total"}}
