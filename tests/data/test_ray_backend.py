"""The Ray Data path gives the same dataset as in-process (skipped when Ray is not installed)."""

import json

import pytest

from llmkit.config import DataConfig
from llmkit.data import prepare
from llmkit.data.ray_backend import shards

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    import os

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def test_shards_cut_at_line_boundaries(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_bytes(b"".join(b'{"a": %d}\n' % i for i in range(100)))
    parts = shards(f, size=50)
    assert parts[0][0] == 0 and parts[-1][1] == f.stat().st_size
    data = f.read_bytes()
    assert all(data[e - 1:e] == b"\n" for _, e in parts)
    assert all(a == b for (_, a), (b, _) in zip(parts, parts[1:]))


def test_ray_and_local_give_the_same_artifact(tmp_path, tiny_llama, local_ray, monkeypatch):
    import llmkit.data.ray_backend as rb

    monkeypatch.setattr(rb, "SHARD_BYTES", 2000)  # several shards even for a small file
    rows = [{"prompt": f"question {i} about item {i * 3}", "completion": f"answer {i}"} for i in range(120)]
    rows += rows[:5]
    lines = [json.dumps(r) for r in rows]
    lines.insert(70, '{"prompt": "broken"')  # line 71
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(lines) + "\n")
    out = {}
    for backend in ("local", "ray"):
        cfg = DataConfig(train=str(f), backend=backend, on_error="skip", val_fraction=0.2)
        r = prepare(cfg, tmp_path / backend, model=str(tiny_llama), progress=False)
        out[backend] = r.card
    for k in ("rows_in", "rows_out", "dropped", "tokens"):
        assert out["ray"][k] == out["local"][k], k
    for name in ("train.jsonl", "val.jsonl", "rejects.jsonl"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()
    assert json.loads((tmp_path / "ray" / "rejects.jsonl").read_text())["line"] == 71
