"""A small soak of a real `llmkit serve` process (bench/soak.py's load, ~1,700 requests at 16 at a time): chat and
completions streamed and not, RAG, guard redactions and blocks, embeddings, two LoRA adapters, and malformed
requests. No 5xx and no dropped connection, every answer the right one for its request, the server's RSS grows by
at most 10% after the warm-up, and the p95 latency of the last quarter is not far above the first's.

The latency bound is loose on purpose (3×): other work on a shared 2-core box moves a quarter's p95 by ±50%
(seen: 0.61–1.29 s between quarters of one run); a server that slows as it runs (a leak, a growing queue, a
table scanned per request) fails it. The full-size run (20,000 requests) is `bench/soak.py`.
"""

from __future__ import annotations

from serve_fixtures import adapters_on_gguf, serve_dir
from soak import ServerProc, mix, run_soak

WARMUP, REQUESTS = 200, 1500


def test_mixed_load_no_5xx_no_growth(tiny_gguf, style_adapters, tmp_path):
    opts = serve_dir(tmp_path)
    adapters = adapters_on_gguf(style_adapters, tiny_gguf, tmp_path / "adapters")
    models = [f"tiny={tiny_gguf}", *(f"{name}={path}" for name, path in adapters.items())]
    srv = ServerProc.start(models, {"threads": 1, "n_ctx": 256, **opts}, tmp_path / "server.log")
    try:
        kw = dict(adapters=tuple(adapters), embedder="all-minilm-l6-v2")
        soak = run_soak(srv, mix(REQUESTS, 0, **kw), mix(WARMUP, 1, **kw), concurrency=16)
        rc = srv.terminate()
    finally:
        srv.kill()
    report = "\n".join(soak.lines())
    assert len(soak.results) == REQUESTS, report
    assert soak.server_errors == 0, f"{report}\n{soak.problems[:10]}"
    assert soak.problems == [], f"{report}\n{soak.problems[:10]}"
    kinds = {r.kind for r in soak.results if r.status == 200}
    assert kinds >= {"chat", "stream", "completion", "rag", "guarded", "embeddings", "adapter", "models"}, kinds
    assert soak.rss_growth <= 0.10, report
    assert soak.p95_quarters[-1] <= 3 * soak.p95_quarters[0], report
    assert rc == 0, (tmp_path / "server.log").read_text()[-2000:]
