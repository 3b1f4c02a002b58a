"""deploy/prometheus/alerts.yml and deploy/grafana/apnsd.json against what a running daemon really exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from apnsd.testing.redis_server import free_port
from tests.support.jobs import job, push_all
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "apnsd.json"
METRIC_NAME = re.compile(r"\b((?:apnsd|process)_[a-z_]+)\b")
Sample = tuple[str, dict[str, str], float]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool (Debian's prometheus package; scripts/setup.sh --test installs it)."""
    exe = shutil.which("promtool")
    assert exe, "promtool is not installed: run scripts/setup.sh --test (or apt-get install prometheus)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml."""
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard's panels and variables."""
    d = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
    return exprs + [v["definition"] for v in d["templating"]["list"] if v["type"] == "query"]


@pytest.fixture
def scraped(app_env, start_daemon, http2_mock, pki, jq) -> tuple[list[Sample], set[str]]:
    """Samples from a daemon on HTTP/2 that delivered, dead-lettered and unregistered notifications."""
    mock = http2_mock(reject_prefixes=(("dead", 400, "BadTopic"), ("900d", 410, "Unregistered")))
    port = free_port()
    start_daemon(
        app_env(
            "shop", mock.host, mock.port, pki.client_pem, METRICS_LISTEN=f"127.0.0.1:{port}", APP_SHOP_PROTOCOL="http2"
        )
    )
    tokens = [os.urandom(32).hex() for _ in range(40)] + ["dead" + os.urandom(30).hex(), "900d" + os.urandom(30).hex()]
    push_all(jq, [job(t, app="shop", enqueued_at=time.time()) for t in tokens], queue="shop:queue")

    families: set[str] = set()

    def samples() -> list[Sample]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            parsed = list(text_string_to_metric_families(resp.read().decode()))
        families.update(f.name for f in parsed)
        # The registry is the process's: keep this daemon's series (and the unlabelled ones), not earlier tests'.
        return [
            (s.name, s.labels, s.value)
            for f in parsed
            for s in f.samples
            if s.labels.get("app", "shop") == "shop" and s.labels.get("queue", "shop:queue") == "shop:queue"
        ]

    def settled() -> list[Sample] | None:
        s = samples()
        values = {(n, tuple(sorted(labels.items()))): v for n, labels, v in s}
        wanted = {
            ("apnsd_connection_up", (("app", "shop"),)): 1,
            ("apnsd_in_flight", (("queue", "shop:queue"),)): 0,
            ("apnsd_queue_depth", (("queue", "shop:queue"),)): 0,
            ("apnsd_dead_letters", ()): 1,
            ("apnsd_unregistered_tokens", ()): 1,
        }
        return s if all(values.get(k) == v for k, v in wanted.items()) else None

    return wait_for(settled, 20, "every notification resolved and the gauges refreshed"), families


def test_promtool_check_rules_passes() -> None:
    """promtool accepts deploy/prometheus/alerts.yml."""
    done = promtool("check", "rules", str(ALERTS))
    assert 0 == done.returncode, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_alerts_cover_what_operators_page_on() -> None:
    """Rules exist for certificate expiry, a connection down 5 minutes, queue age, dead-letter rate and no progress."""
    by_name = {r["alert"]: r for r in rules()}
    assert {
        "ApnsdCertificateExpiresSoon",
        "ApnsdConnectionDown",
        "ApnsdQueueStale",
        "ApnsdDeadLetterRate",
        "ApnsdNoProgress",
    } == set(by_name)
    assert "14 * 86400" in by_name["ApnsdCertificateExpiresSoon"]["expr"]
    assert "5m" == by_name["ApnsdConnectionDown"]["for"]


def test_every_metric_in_the_dashboard_and_rules_is_exported(scraped: tuple[list[Sample], set[str]]) -> None:
    """Each metric the dashboard and the rules use is declared in a running daemon's /metrics (series for the
    ones without labels from configuration, such as a disconnect cause, appear with their first event)."""
    samples, families = scraped
    exported = {name for name, _, _ in samples} | families
    used = {m for e in [*dashboard_exprs(), *(r["expr"] for r in rules())] for m in METRIC_NAME.findall(e)}
    assert set() == {
        m for m in used if m not in exported and re.sub(r"_(total|bucket|count|sum)$", "", m) not in families
    }
    assert {"apnsd_gateway_round_trip_seconds_bucket", "apnsd_delivery_latency_seconds_bucket"} <= used


def series(name: str, labels: dict[str, str]) -> str:
    """A PromQL series selector for promtool's input_series."""
    return name + "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())) + "}"


def alert_test(
    scraped: list[Sample], overrides: dict[str, str], eval_minutes: int, expected: dict[str, list[dict[str, str]]]
) -> dict[str, Any]:
    """A promtool test: the scrape's series (constant, or as ``overrides`` give by name) and the alerts expected."""
    rows = []
    for name, labels, value in scraped:
        if name.endswith("_created") or value != value:
            continue
        rows.append({"series": series(name, labels), "values": overrides.get(name, f"{value!r}+0x{eval_minutes + 10}")})
    return {
        "interval": "1m",
        "input_series": rows,
        "alert_rule_test": [
            {"eval_time": f"{eval_minutes}m", "alertname": r["alert"], "exp_alerts": expected.get(r["alert"], [])}
            for r in rules()
        ],
    }


def test_rules_evaluate_against_a_live_scrape(scraped: tuple[list[Sample], set[str]], tmp_path: Path) -> None:
    """With the scrape as it is no alert fires; with its values turned bad, each rule returns its app or queue."""
    samples = scraped[0]
    n = 130
    bad = {
        "apnsd_certificate_expiry_timestamp_seconds": f"{5 * 86400}+0x{n}",
        "apnsd_connection_up": f"0+0x{n}",
        "apnsd_gateway_backlog": f"5+0x{n}",
        "apnsd_queue_oldest_job_age_seconds": f"1000+0x{n}",
        "apnsd_queue_depth": f"10+0x{n}",
    }
    dead = next(v for name, labels, v in samples if name == "apnsd_notifications_total" and labels["outcome"] == "dead")
    healthy = alert_test(samples, {}, 120, {})
    broken = alert_test(samples, bad, 120, {})
    for row in broken["input_series"]:
        if row["series"] == series("apnsd_notifications_total", {"app": "shop", "outcome": "dead"}):
            row["values"] = f"{dead!r}+10x{n}"
    # The broken series, evaluated at 120 m (time() = 7200): what each rule's expression returns.
    fired = {
        "ApnsdCertificateExpiresSoon": ('{app="shop"}', 5 * 86400 - 7200),
        "ApnsdConnectionDown": ('{app="shop"}', 0),
        "ApnsdQueueStale": ('{queue="shop:queue"}', 1000),
        "ApnsdDeadLetterRate": ('{app="shop"}', 1),
        "ApnsdNoProgress": ('{queue="shop:queue"}', 10),
    }
    del broken["alert_rule_test"]
    broken["promql_expr_test"] = [
        {
            "expr": r["expr"],
            "eval_time": "120m",
            "exp_samples": [{"labels": fired[r["alert"]][0], "value": fired[r["alert"]][1]}],
        }
        for r in rules()
    ]
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    (tmp_path / "test.yml").write_text(yaml.safe_dump({"rule_files": ["alerts.yml"], "tests": [healthy, broken]}))

    done = promtool("test", "rules", "test.yml", cwd=tmp_path)

    assert 0 == done.returncode, done.stdout + done.stderr
