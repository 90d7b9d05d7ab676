"""A real Prometheus (Debian's package, started by scripts/prometheus.sh as users start it) scrapes a real server,
and PromQL returns its request count; the shipped rules pass promtool (syntax and their unit tests), and every
query of the Grafana dashboard is one Prometheus accepts."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from serve_helpers import MODEL, wait_until

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prometheus.sh"


@pytest.fixture(scope="module")
def promtool() -> str:
    if shutil.which("promtool") is None:
        if os.geteuid() != 0:
            pytest.skip("prometheus is not installed and we are not root to apt-get it (sudo apt-get install prometheus)")
        subprocess.run([str(SCRIPT), "install"], check=True, timeout=600)
    return shutil.which("promtool")


def test_rules_pass_promtool(promtool):
    rules = ROOT / "deploy" / "prometheus"
    check = subprocess.run([promtool, "check", "rules", "rules.yml"], cwd=rules, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert re.search(r"SUCCESS: \d+ rules found", check.stdout)
    unit = subprocess.run([promtool, "test", "rules", "rules_test.yml"], cwd=rules, capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_scrapes_the_server(promtool, make_server, tmp_path):
    srv = make_server()
    c = srv.openai()
    for _ in range(3):
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    port = free_port()
    env = {**os.environ, "PROM_DIR": str(tmp_path / "prom"), "PROM_PORT": str(port), "SCRAPE_INTERVAL": "1s"}
    target = srv.url.removeprefix("http://")
    start = subprocess.run([str(SCRIPT), "start", target], env=env, capture_output=True, text=True, timeout=60)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        api = f"http://127.0.0.1:{port}/api/v1"

        def query(q: str) -> dict:
            r = httpx.get(f"{api}/query", params={"query": q}, timeout=5)
            assert r.status_code == 200, r.text
            return r.json()["data"]

        def chats() -> float:
            res = query('sum(llmkit_requests_total{route="/v1/chat/completions", status="200"})')["result"]
            return float(res[0]["value"][1]) if res else 0.0

        wait_until(lambda: chats() >= 3, 30, "Prometheus to scrape the server's request count")
        assert chats() == 3
        targets = httpx.get(f"{api}/targets").json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"] and targets[0]["scrapeUrl"] == f"{srv.url}/metrics"
        rules = httpx.get(f"{api}/rules").json()["data"]["groups"]
        assert {g["name"] for g in rules} == {"llmkit-recording", "llmkit-alerts"}
        # every panel query of the Grafana dashboard parses and runs (Grafana's variables filled in)
        dash = json.loads((ROOT / "deploy" / "grafana" / "llmkit.json").read_text())
        for panel in dash["panels"]:
            for t in panel["targets"]:
                q = (t["expr"].replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$job", ".*"))
                assert query(q)["resultType"] == "vector", panel["title"]
    finally:
        stop = subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=30)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
