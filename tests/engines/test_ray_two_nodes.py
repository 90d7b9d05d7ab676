"""Must-show of issue 19: Ray batch jobs on a real two-node cluster on 127.0.0.1 (`ray start --head` + `ray start
--address`, one CPU each; tests/ray_helpers.py starts it, bounds it and tears it down). `llmkit generate --backend
ray` with two actors, one per node, gives the same greedy answers as `--backend local`, in input order, and
resumes a partial output; the rag stage's embedding on two actors (`rag.backend: ray`) gives the local vectors.
~130 s on a busy 2-core box: the two nodes start in ~36 s, the embedder loads in three processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).parents[1]))
from ray_helpers import two_node_cluster  # noqa: E402

from llmkit.engines import GenParams  # noqa: E402
from llmkit.engines.batch import BatchSpec, generate  # noqa: E402

pytestmark = pytest.mark.timeout(300)

PROMPTS = [{"prompt": f"Customer {i} asks: my router {i} blinks amber, what now?"} for i in range(14)] + \
    [{"messages": [{"role": "user", "content": "Reset the modem?"}]},
     {"messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}]}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, env) of the two-node cluster. The jobs run as the CLI in a process of their own, as a user runs
    them: Ray reads its token settings when it is imported, and this test process may hold another Ray already."""
    with two_node_cluster(tmp_path_factory.mktemp("ray2")) as c:
        yield c


def _cli(cluster, home: Path, *args: str) -> str:
    address, env = cluster
    p = subprocess.run([sys.executable, "-m", "llmkit.cli", *args, "--ray-address", address], capture_output=True,
                       text=True, timeout=180, env={**os.environ, **env, "LLMKIT_HOME": str(home)})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "WARNING" not in p.stderr and "INFO" not in p.stderr, p.stderr  # Ray's chatter stays out of the output
    return p.stdout


def _spec(model):
    return BatchSpec(model=str(model), threads=1, parallel=4, n_ctx=256, params=GenParams(max_tokens=12))


def test_generate_on_two_nodes_equals_local_and_resumes(cluster, tiny_gguf, tmp_path, llmkit_home):
    inp = tmp_path / "prompts.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    local = generate(inp, tmp_path / "local.jsonl", _spec(tiny_gguf), progress=False)
    assert local["answered"] == 16
    args = ["generate", "--input", str(inp), "--model", str(tiny_gguf), "--backend", "ray", "--workers", "2",
            "--threads", "1", "--parallel", "4", "--n-ctx", "256", "--max-tokens", "12", "--quiet", "--json"]
    s = json.loads(_cli(cluster, llmkit_home, *args, "--out", str(tmp_path / "ray.jsonl")).splitlines()[-1])
    assert (s["answered"], s["errors"], s["nodes"]) == (16, 0, 2)  # one actor on each node
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    answers = [json.loads(x)["answer"] for x in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert len(set(answers)) > 1  # the prompts differ, and so do the answers: nothing was copied across rows

    part = tmp_path / "part.jsonl"
    lines = (tmp_path / "local.jsonl").read_bytes().splitlines(keepends=True)
    part.write_bytes(b"".join(lines[:5]) + lines[5][:10])  # a run killed while writing row 6
    r = json.loads(_cli(cluster, llmkit_home, *args, "--out", str(part)).splitlines()[-1])
    assert (r["skipped"], r["answered"]) == (5, 11)
    assert part.read_bytes() == (tmp_path / "local.jsonl").read_bytes()


def test_rag_embedding_on_two_nodes_equals_local(cluster, tmp_path, llmkit_home):
    from llmkit.rag.store import LanceStore

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(10):
        (docs / f"d{i}.md").write_text(f"# Device {i}\n\n" + f"Device {i} restarts when you hold its button "
                                       f"for {i + 3} seconds. " * (1 + i % 4))
    from llmkit.config import RagConfig
    from llmkit.rag import index

    index(RagConfig(sources=[str(docs)], batch_size=3), tmp_path / "local" / "docs", progress=False)
    _cli(cluster, llmkit_home, "rag", "index", str(docs), "--collection", "docs", "--store", str(tmp_path / "ray"),
         "--batch-size", "3", "--backend", "ray", "--workers", "2", "--quiet")
    vec = {}
    for backend in ("local", "ray"):
        t = LanceStore(tmp_path / backend / "docs" / "lance", "docs").read().sort_by("id")
        vec[backend] = (t["id"].to_pylist(), np.array(t["vector"].to_pylist(), dtype=np.float32))
    ids, local = vec["local"]
    assert vec["ray"][0] == ids and len(ids) >= 10
    # the same batches on the same CPU; torch runs 1 thread in an actor and 2 here, which may reorder sums
    np.testing.assert_allclose(vec["ray"][1], local, rtol=0, atol=1e-6)
    # where it ran is not part of the index's identity: the local index, asked again on Ray, is skipped
    again = index(RagConfig(sources=[str(docs)], batch_size=3, backend="ray", ray_address=cluster[0]),
                  tmp_path / "local" / "docs", progress=False)
    assert again["status"] == "skipped"
