"""What the side-by-side train benches (train_grpo.py, train_reward.py) share: the machine's state, and running each
side in its own process so that its peak RSS is its own.

    import sides                       # bench/ is on sys.path when a bench runs as `python bench/NAME.py`
    print(sides.machine())
    results = sides.run(__file__, ["llmkit", "trl"], ["--work", str(work), "--steps", "12"])
"""

import json
import resource
import subprocess
import sys
from pathlib import Path


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def machine() -> str:
    """uptime (the load: a busy 2-core box distorts timings many times over) and the CPU's vector flags."""
    flags = set(Path("/proc/cpuinfo").read_text().split())
    vec = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f == "avx2")
    return f"uptime: {uptime()}\ncpu flags: {' '.join(vec)}"


def run(script: str, names: list[str], args: list[str]) -> dict[str, dict]:
    """Run `script --child NAME *args` for each name, one after the other; each prints its result as its last
    stdout line (see `child_result`). Exits naming the side that failed, with its stderr's tail."""
    results = {}
    for name in names:
        p = subprocess.run([sys.executable, script, *args, "--child", name], capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{name} failed:\n{p.stderr[-3000:]}")
        results[name] = r = json.loads(p.stdout.strip().splitlines()[-1])
        print(name, json.dumps(r))
        print("uptime:", uptime())
    return results


def child_result(res: dict) -> None:
    """Print a side's result with its peak RSS (GB) as one JSON line: what `run` reads."""
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(res))


def arguments(doc: str, steps_help: str):
    """The options every side-by-side bench takes: --steps, --precision (both sides'), and the child's own."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help=steps_help)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="both sides' precision")
    ap.add_argument("--child", choices=["llmkit", "trl"], help="(internal) run one side in this process")
    ap.add_argument("--work", help="(internal) the run's scratch folder")
    return ap
