"""`llmkit train --nproc 2`: two gloo processes on this CPU, the same weights on both ranks, the same losses as
one process accumulating the same micro-batches."""

import json
import subprocess
import sys

from test_sft import dataset  # noqa: F401  (fixture)


def test_two_processes_end_with_identical_weights(tiny_llama, dataset, tmp_path):  # noqa: F811
    def run(name, accum, nproc):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(f"name: {name}\nmodel: {tiny_llama}\ntrain: {{lr: 0.005, batch_size: 2, max_length: 128,"
                          f" grad_accum: {accum}, eval_every: 1000, save_every: 1000, precision: fp32}}\n")
        p = subprocess.run([sys.executable, "-m", "llmkit.cli", "train", "--recipe", str(recipe), "--data", str(dataset),
                            "--out", str(tmp_path / name), "--max-steps", "5", "--nproc", str(nproc)],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return json.loads((tmp_path / name / "manifest.json").read_text())["metrics"]["losses"]

    two = run("ddp", accum=1, nproc=2)
    digests = sorted((tmp_path / "ddp.ranks").glob("rank-*.sha256"))
    assert len(digests) == 2 and digests[0].read_text() == digests[1].read_text()
    one = run("accum", accum=2, nproc=1)  # the same 2 micro-batches per step, in one process
    assert len(one) == len(two) == 5
    for (_, a), (_, b) in zip(one, two):
        assert abs(a - b) <= 1e-4 * abs(a), (one, two)
