"""`llmkit train --nnodes 2`: two torchrun "nodes" on 127.0.0.1 (one process each, node ranks 0 and 1) end with
the same adapter as one `--nproc 2` run on one node; and the launch flags become the torchrun command."""

import argparse
import os
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file
from test_sft import dataset  # noqa: F401  (fixture)

from llmkit.commands.train import _nodes, torchrun_command
from llmkit.errors import ConfigError


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_the_same_adapter_as_two_processes(tiny_llama, dataset, tmp_path):  # noqa: F811
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nmodel: {tiny_llama}\ntrain: {{lr: 0.005, batch_size: 2, max_length: 128,"
                      f" eval_every: 1000, save_every: 1000, precision: fp32}}\n")

    def train(out: str, *flags: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "llmkit.cli", "train", "--recipe", str(recipe), "--data",
                                 str(dataset), "--out", str(tmp_path / out), "--max-steps", "4", *flags],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})

    port = _port()
    nodes = [train("nodes", "--nnodes", "2", "--node-rank", str(rank), "--nproc", "1", "--master-addr", "127.0.0.1",
                   "--master-port", str(port)) for rank in (0, 1)]
    for node in nodes:
        out, _ = node.communicate(timeout=600)
        assert node.returncode == 0, out[-3000:]
    one = train("nproc", "--nproc", "2")
    out, _ = one.communicate(timeout=600)
    assert one.returncode == 0, out[-3000:]
    # node 1's rank is global rank 1: it wrote its digest beside node 0's, and they agree
    digests = sorted((tmp_path / "nodes.ranks").glob("rank-*.sha256"))
    assert [d.name for d in digests] == ["rank-0.sha256", "rank-1.sha256"]
    assert digests[0].read_text() == digests[1].read_text()
    a = load_file(tmp_path / "nodes" / "adapter_model.safetensors")
    b = load_file(tmp_path / "nproc" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k].equal(b[k]), k  # same ranks, same shards, same all-reduce: bit for bit
    assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)  # it did train (B starts at 0)


def test_launch_flags_become_the_torchrun_command():
    argv = ["train", "--recipe", "r.yaml", "--nnodes", "2", "--node-rank=1", "--nproc", "4", "--master-addr",
            "10.0.0.1", "--master-port", "29511", "--max-steps", "3"]
    cmd = torchrun_command(4, (2, 1, "10.0.0.1", 29511), argv, port=12345)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc_per_node=4", "--nnodes=2", "--node_rank=1",
                       "--master_addr=10.0.0.1", "--master_port=29511", "-m", "llmkit.cli", "train", "--recipe",
                       "r.yaml", "--max-steps", "3"]
    one = torchrun_command(2, None, ["train", "--recipe", "r.yaml", "--nproc=2"], port=12345)
    assert one[3:8] == ["--nproc_per_node=2", "--nnodes=1", "--node_rank=0", "--master_addr=127.0.0.1",
                        "--master_port=12345"] and one[-3:] == ["train", "--recipe", "r.yaml"]


def test_multinode_flags_are_checked_together():
    def nodes(**kw):
        return _nodes(argparse.Namespace(**{"nnodes": 1, "node_rank": None, "master_addr": None,
                                            "master_port": None, **kw}))

    with pytest.raises(ConfigError) as e:
        nodes(nnodes=2, node_rank=2)
    assert len(e.value.problems) == 2 and "0 to 1" in e.value.problems[0] and "--master-addr" in e.value.problems[1]
    with pytest.raises(ConfigError, match="--nnodes"):
        nodes(master_addr="10.0.0.1")
    assert nodes() is None
    assert nodes(nnodes=2, node_rank=0, master_addr="10.0.0.1") == (2, 0, "10.0.0.1", 29500)
