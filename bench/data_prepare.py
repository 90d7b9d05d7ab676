"""Throughput and peak memory of the data stage streaming N short rows, beside a plain HF `datasets` pipeline.

    .venv/bin/python bench/data_prepare.py --rows 1000000

Both sides read the same alpaca JSONL, turn rows into chat messages, apply SmolLM2's chat template and count
tokens; llmkit also validates every row, normalizes text, dedupes exactly, splits and writes the data card.
Each side runs in its own process; peak memory is that process and its children together (llmkit forks one
worker per core for inputs over 4 MB), counted as PSS so pages shared after fork count once. Check `uptime` first: a busy box lies.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("router light wifi reset guest network slow password update firmware modem mesh node port app "
         "signal band channel cable restart check status").split()


def make_rows(path: Path, n: int) -> None:
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(n):
            q = " ".join(rng.choices(WORDS, k=12))
            a = " ".join(rng.choices(WORDS, k=16))
            f.write(json.dumps({"instruction": f"{q} {i}?", "input": "", "output": f"{a}."}) + "\n")


def run_llmkit(path: str, out: str) -> dict:
    import transformers  # noqa: F401  (imported before the clock starts, as on the datasets side)

    from llmkit.config import DataConfig
    from llmkit.data import prepare
    from llmkit.models import hf_folder, resolve_model

    hf_folder(resolve_model("smollm2-135m-instruct"))  # the conversion is cached; both sides start from it
    t0 = time.perf_counter()
    r = prepare(DataConfig(train=path, dedupe="exact", val_fraction=0.01), Path(out), progress=False)
    return {"seconds": time.perf_counter() - t0, "rows_out": sum(r.card["rows_out"].values())}


def run_datasets(path: str, out: str) -> dict:
    import datasets
    from transformers import AutoTokenizer

    from llmkit.models import hf_folder, resolve_model

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(hf_folder(resolve_model("smollm2-135m-instruct")))
    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=path, split="train", cache_dir=out)

    def to_tokens(batch):
        texts = [tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                         tokenize=False) for q, a in zip(batch["instruction"], batch["output"])]
        return {"n_tokens": [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]}

    ds = ds.map(to_tokens, batched=True, batch_size=512, remove_columns=ds.column_names)
    ds = ds.filter(lambda b: [n <= 2048 for n in b["n_tokens"]], batched=True)
    ds.to_json(os.path.join(out, "out.jsonl"))
    return {"seconds": time.perf_counter() - t0, "rows_out": len(ds)}


class TreeRss:
    """Peak memory (PSS) of this process and all its children together (llmkit may use worker processes;
    ru_maxrss would see only one), sampled every 0.5 s (reading smaps costs CPU)."""

    def __init__(self):
        import threading

        import psutil

        self.me, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        import psutil

        while not self.stop.wait(0.5):
            total = 0
            for p in [self.me, *self.me.children(recursive=True)]:
                try:
                    # PSS splits pages shared after fork among the processes sharing them; RSS would count
                    # the parent's imported libraries once per worker
                    total += p.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def done(self) -> float:
        self.stop.set()
        self.thread.join()
        return self.peak / 2**20


def child(which: str, path: str) -> None:
    rss = TreeRss()
    with tempfile.TemporaryDirectory() as out:
        res = {"llmkit": run_llmkit, "datasets": run_datasets}[which](path, out + "/o")
    res["peak_rss_mb"] = rss.done()
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--child", choices=["llmkit", "datasets"])
    ap.add_argument("--path")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.path)
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.jsonl"
        make_rows(path, args.rows)
        print(f"{args.rows} rows, {path.stat().st_size / 1e6:.0f} MB")
        results = {}
        for which in ("llmkit", "datasets"):
            p = subprocess.run([sys.executable, __file__, "--child", which, "--path", str(path)],
                               capture_output=True, text=True)
            if p.returncode:
                print(which, "failed:", p.stderr[-2000:])
                continue
            results[which] = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"{'':10} {'rows/s':>10} {'seconds':>9} {'peak PSS MB':>12} {'rows out':>9}")
    for k, r in results.items():
        print(f"{k:10} {args.rows / r['seconds']:>10.0f} {r['seconds']:>9.1f} {r['peak_rss_mb']:>12.0f} {r['rows_out']:>9}")
    if len(results) == 2:
        a, b = results["llmkit"], results["datasets"]
        print(f"llmkit / datasets: speed {b['seconds'] / a['seconds']:.2f}x, peak memory {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
