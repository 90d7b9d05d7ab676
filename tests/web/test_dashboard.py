"""`llmkit dashboard`'s app (no server, no models): runs and their lineage, eval reports, a request log's windows,
the registry when MLflow has no database yet, and the same API keys as the server."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from test_ui_browser import make_runs

from llmkit.monitor.store import open_log
from llmkit.serve.auth import KeyStore, hash_key
from llmkit.web import dashboard_app


def test_dashboard_shows_runs_lineage_log_and_registry(tmp_path, monkeypatch):
    make_runs(tmp_path / "runs")
    log = open_log(tmp_path / "requests.db")
    now = time.time()
    for i in range(6):  # two requests a second, the last one refused by a rail
        log.write({"request_id": f"chatcmpl-{i}", "time": now - 3 + i / 2, "route": "/v1/chat/completions",
                   "model": "m", "status": 200, "latency_s": 0.5 + i / 10, "completion_tokens": 10, "input": ["hi"],
                   "guard": [{"side": "input", "rail": "pii", "action": "redact"}] if i == 5 else []})
    log.close()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}")  # not made yet
    app = dashboard_app(tmp_path / "runs", tmp_path / "requests.db")
    with TestClient(app) as c:
        assert c.get("/", follow_redirects=False).headers["location"] == "/ui"
        assert "<script src=\"/ui/static/app.js\">" in c.get("/ui").text
        assert c.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/ui/static/../api.py").status_code == 404
        info = c.get("/ui/api/info").json()
        assert info["server"] is False and info["request_log"].endswith("requests.db")
        runs = c.get("/ui/api/runs").json()["runs"]
        assert [r["name"] for r in runs] == ["support"]
        eval_ = runs[0]["stages"][1]
        assert eval_["kind"] == "eval" and eval_["passed"] is True and eval_["metrics"] == {"support.acc": 0.75}
        g = c.get("/ui/api/runs/support/graph").json()
        kinds = {n["id"]: n["kind"] for n in g["nodes"]}
        assert sorted(kinds.values()) == ["dataset", "eval", "input"]
        assert sorted((kinds[e["from"]], kinds[e["to"]]) for e in g["edges"]) == [("dataset", "eval"), ("input", "dataset")]
        assert c.get("/ui/api/runs/..%2F..%2Fetc/graph").status_code == 404
        s = c.get("/ui/api/series", params={"minutes": 30}).json()
        assert s["total"]["requests"] == 6 and s["total"]["guard"] == {"input:pii": 1}
        assert len(s["windows"]) >= 2 and s["x0"] < now - 3  # finer windows over the few seconds the log covers
        assert sum(w["requests"] for w in s["windows"]) == 6
        assert c.get("/ui/api/drift").json() == {"enabled": False, "points": []}
        reg = c.get("/ui/api/registry").json()
        assert reg == {"available": True, "uri": f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}", "versions": []}
    keyed = dashboard_app(tmp_path / "runs", keys=KeyStore({hash_key("sk-1")}))
    with TestClient(keyed) as c:
        assert c.get("/ui").status_code == 200
        for route in ("/ui/api/info", "/ui/api/runs", "/ui/api/registry", "/ui/files/support/eval/report.html"):
            assert c.get(route).status_code == 401, route
        assert c.get("/ui/api/runs", headers={"Authorization": "Bearer sk-1"}).status_code == 200
