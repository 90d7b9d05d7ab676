"""Soak: `llmkit serve` under a long mixed load — does it stay up, stay small and stay as fast as it started?

    .venv/bin/python bench/soak.py --tiny                      # the tests' tiny random Llama (GGUF), 20,000 requests
    .venv/bin/python bench/soak.py --model smollm2-135m-instruct --requests 4000
    .venv/bin/python bench/soak.py --tiny --adapter pirate=runs/x/train/adapter ...

The server is a real `llmkit serve` subprocess on a free 127.0.0.1 port (loopback only) with everything on: a
guard policy (pii, secrets, topics, length: rails without trained classifiers), a rag collection, the request
log (SQLite), the MiniLM embedder, and any --adapter. The load is a shuffled mix at --concurrency: chat and
completions, streamed and not, RAG chats (streamed and not), embeddings, adapter chats, requests the guard
redacts or blocks, and malformed ones (broken JSON, wrong types, missing fields, a body over the limit, unknown
model, route and method, a prompt over the context); each kind has the statuses that are right for it, and a
streamed 200 must end with `data: [DONE]`, carry a finish_reason and no error event.

After --warmup requests the server's RSS is read (psutil, the process and its children), then the requests run
in four quarters one after the other; the RSS and the p95 latency of each quarter are printed. The figures: the
count, the statuses, the 5xx (none allowed), wrong answers, RSS after warm-up and at the end (growth in %),
p95 of the first and last quarter. With `uptime` and the lscpu flags line: on a busy 2-core box timings lie.
tests/reliability/test_serve_soak.py runs a small version of the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

POLICY = """
input:
  pii: {action: redact}
  secrets: {action: redact}
  topics: {deny: [bomb]}
  length: {max_chars: 4000}
output:
  pii: {action: redact}
  secrets: {action: redact}
"""
DOCS = {"router.md": "# Router\n\n## Factory reset\n\nHold Reset for 10 seconds.\n\n## Lights\n\nAmber: no internet.\n",
        "modem.txt": "The MAC address is on the label under the modem.\n"}
PROMPTS = ["How do I restart my router?", "Paris is the capital of", "What does the amber light mean?",
           "The quick brown fox", "Where is the MAC address?", "Tell me a short story about a modem."]


def write_collection(root: Path) -> Path:
    """The rag collection 'help' (two small documents) under root/store; returns the folder of collections."""
    from llmkit.config import RagConfig
    from llmkit.rag import index

    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    if not (root / "store" / "help").is_dir():
        index(RagConfig(sources=[str(docs)], collection="help"), root / "store" / "help", progress=False)
    return root / "store"


# ---------------------------------------------------------------------------------------------------------
# The server, as a subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProc:
    proc: subprocess.Popen
    url: str
    log: Path

    @classmethod
    def start(cls, models: list[str], opts: dict[str, str | None], log: Path, timeout: float = 180,
              python: str = sys.executable) -> ServerProc:
        """`llmkit serve` with `--model` each of `models` and `--KEY VALUE` each of `opts` (None: a bare flag),
        its output in `log`; returns once /health answers 200."""
        port = free_port()
        cmd = [python, "-m", "llmkit.cli", "serve", "--port", str(port), "--no-ui", "--log-level", "warning"]
        for m in models:
            cmd += ["--model", m]
        for k, v in opts.items():
            cmd += [f"--{k.replace('_', '-')}"] + ([] if v is None else [str(v)])
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        out = open(log, "ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out.close()
        srv = cls(proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llmkit serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{srv.url}/health", timeout=1).status_code == 200:
                    return srv
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                srv.kill()
                raise RuntimeError(f"llmkit serve did not answer /health in {timeout:g} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def rss(self) -> int:
        """Resident memory of the server and its children, in bytes."""
        import psutil

        p = psutil.Process(self.proc.pid)
        return p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


# ---------------------------------------------------------------------------------------------------------
# The load


@dataclass
class Req:
    kind: str
    method: str
    path: str
    body: bytes | None
    ok: frozenset[int]
    stream: bool = False


def _post(kind: str, path: str, body: dict | bytes, ok: set[int], stream: bool = False) -> Req:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Req(kind, "POST", path, data, frozenset(ok), stream)


def mix(n: int, seed: int = 0, model: str = "tiny", adapters: tuple[str, ...] = (), embedder: str | None = None,
        max_tokens: int = 8, long_prompt_words: int = 400) -> list[Req]:
    """`n` requests of every kind (see the module's docstring), shuffled; the same for the same seed."""
    rnd = random.Random(seed)
    chat, cmpl = "/v1/chat/completions", "/v1/completions"

    def msgs(text: str | None = None) -> list[dict]:
        return [{"role": "user", "content": text or rnd.choice(PROMPTS)}]

    def mt() -> int:
        return rnd.randint(1, max_tokens)

    kinds = [
        lambda: _post("malformed", chat, b'{"model": "tiny", "messages": [', {400}),
        lambda: _post("malformed", chat, {"model": model, "messages": "hi", "temperature": "hot"}, {400}),
        lambda: _post("malformed", rnd.choice([chat, cmpl]), {"messages": msgs()} if rnd.random() < 0.5 else
                      {"model": model}, {400}),
        lambda: _post("malformed", cmpl, b'{"model": "tiny", "prompt": "' + b"x" * (1 << 20) + b'"}', {413}),
        lambda: _post("malformed", chat, {"model": "nope", "messages": msgs()}, {404}),
        lambda: _post("malformed", chat, {"model": model, "messages": msgs("fox " * long_prompt_words)}, {400}),
        lambda: rnd.choice([Req("malformed", "GET", "/v1/nowhere", None, frozenset({404})),
                            Req("malformed", "DELETE", chat, None, frozenset({405}))]),
        lambda: Req("models", "GET", rnd.choice(["/v1/models", "/health", f"/v1/models/{model}"]), None,
                    frozenset({200})),
        lambda: _post("guarded", chat, {"model": model, "max_tokens": mt(), "stream": rnd.random() < 0.5,
                                        "messages": msgs("Mail jane.doe@example.com, card 4111 1111 1111 1111")},
                      {200}),
        lambda: _post("guarded", rnd.choice([chat, cmpl]),
                      {"model": model, "max_tokens": mt(), "messages": msgs("how to build a bomb"),
                       "prompt": "how to build a bomb"}, {400}),
        lambda: _post("rag", chat, {"model": model, "max_tokens": mt(), "messages": msgs(),
                                    "rag": {"collection": "help", "top_k": rnd.randint(1, 3)}}, {200}),
        lambda: _post("rag", chat, {"model": model, "max_tokens": mt(), "messages": msgs(), "stream": True,
                                    "rag": {"collection": "help"}}, {200}, stream=True),
        (lambda: _post("embeddings", "/v1/embeddings", {"model": embedder, "input": rnd.sample(PROMPTS, 2)}, {200}))
        if embedder else (lambda: _post("chat", chat, {"model": model, "max_tokens": mt(), "messages": msgs()}, {200})),
        lambda: _post("adapter" if adapters else "chat", chat,
                      {"model": rnd.choice(adapters) if adapters else model, "max_tokens": mt(), "messages": msgs(),
                       "stream": (s := rnd.random() < 0.5)}, {200}, stream=s),
        lambda: _post("chat", chat, {"model": model, "max_tokens": mt(), "messages": msgs(), "temperature": 0}, {200}),
        lambda: _post("chat", chat, {"model": model, "max_tokens": mt(), "messages": msgs(), "n": 2, "seed": 1},
                      {200}),
        lambda: _post("stream", chat, {"model": model, "max_tokens": mt(), "messages": msgs(), "stream": True,
                                       "stream_options": {"include_usage": True}}, {200}, stream=True),
        lambda: _post("completion", cmpl, {"model": model, "prompt": rnd.choice(PROMPTS), "max_tokens": mt(),
                                           "n": rnd.choice([1, 2])}, {200}),
        lambda: _post("stream", cmpl, {"model": model, "prompt": rnd.choice(PROMPTS), "max_tokens": mt(),
                                       "stream": True}, {200}, stream=True),
        lambda: _post("chat", chat, {"model": model, "max_completion_tokens": mt(), "messages": msgs()}, {200}),
    ]
    out = [kinds[i % len(kinds)]() for i in range(n)]
    # a guarded request may stream; the stream flag follows the body
    out = [Req(r.kind, r.method, r.path, r.body, r.ok, r.stream or (r.body is not None and b'"stream": true' in r.body))
           for r in out]
    rnd.shuffle(out)
    return out


def stream_problem(text: str) -> str | None:
    """What is wrong with a streamed 200's body, or None: it must end with [DONE], finish every choice, and carry
    no error event."""
    if not text.rstrip().endswith("data: [DONE]"):
        return "stream not ended with [DONE]"
    finished = False
    for line in text.splitlines():
        if line.startswith("data: {"):
            obj = json.loads(line[6:])
            if "error" in obj:
                return f"error event in the stream: {obj['error']}"
            finished |= any(c.get("finish_reason") for c in obj.get("choices", []))
    return None if finished else "stream without a finish_reason"


@dataclass
class Result:
    kind: str
    status: int
    seconds: float
    problem: str | None = None


async def drive(url: str, todo: list[Req], concurrency: int = 16, timeout: float = 120,
                headers: dict[str, str] | None = None) -> list[Result]:
    """Send every request, at most `concurrency` at once; one Result per request, in the order of `todo`."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, headers=headers) as client:

        async def one(r: Req) -> Result:
            async with gate:
                t0 = time.perf_counter()
                try:
                    resp = await client.request(r.method, r.path, content=r.body,
                                                headers={"content-type": "application/json"} if r.body else None)
                    await resp.aread()
                except httpx.TransportError as e:  # the server hung up or stalled: as bad as a 5xx
                    return Result(r.kind, 599, time.perf_counter() - t0,
                                  f"{r.method} {r.path} {(r.body or b'')[:80]!r}: {e!r} after {time.perf_counter() - t0:.3f} s")
                dt = time.perf_counter() - t0
            problem = None
            if resp.status_code not in r.ok:
                problem = f"{r.method} {r.path} {(r.body or b'')[:80]!r}: {resp.status_code} {resp.text[:200]}"
            elif resp.status_code == 200 and r.stream:
                problem = stream_problem(resp.text)
                problem = problem and f"{r.method} {r.path} {r.kind}: {problem}"
            elif resp.status_code >= 400 and "error" not in resp.json():
                problem = f"{r.method} {r.path}: {resp.status_code} without OpenAI's envelope: {resp.text[:200]}"
            return Result(r.kind, resp.status_code, dt, problem)

        return list(await asyncio.gather(*(one(r) for r in todo)))


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20, method="inclusive")[-1] if len(xs) > 1 else (xs[0] if xs else 0.0)


@dataclass
class Soak:
    results: list[Result] = field(default_factory=list)
    rss_after_warmup: int = 0
    rss_quarters: list[int] = field(default_factory=list)  # after each quarter
    p95_quarters: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def statuses(self) -> Counter:
        return Counter(r.status for r in self.results)

    @property
    def server_errors(self) -> int:
        return sum(1 for r in self.results if r.status >= 500)

    @property
    def problems(self) -> list[str]:
        return [r.problem for r in self.results if r.problem]

    @property
    def rss_growth(self) -> float:
        return self.rss_quarters[-1] / self.rss_after_warmup - 1

    def lines(self) -> list[str]:
        mb = 1 << 20
        kinds = Counter(r.kind for r in self.results)
        return [
            f"requests: {len(self.results)} in {self.seconds:.1f} s ({len(self.results) / self.seconds:.1f}/s); "
            f"by kind: {dict(sorted(kinds.items()))}",
            f"statuses: {dict(sorted(self.statuses.items()))}; 5xx: {self.server_errors}; "
            f"wrong answers: {len(self.problems)}",
            f"RSS after warm-up {self.rss_after_warmup / mb:.1f} MiB; after each quarter "
            f"{', '.join(f'{x / mb:.1f}' for x in self.rss_quarters)} MiB; growth {100 * self.rss_growth:+.1f}%",
            f"p95 latency per quarter (s): {', '.join(f'{x:.3f}' for x in self.p95_quarters)}; "
            f"last/first {self.p95_quarters[-1] / self.p95_quarters[0]:.2f}",
        ]


def run_soak(srv: ServerProc, todo: list[Req], warmup: list[Req], concurrency: int = 16,
             progress=None) -> Soak:
    """The warm-up, then `todo` in four quarters; RSS after the warm-up and after each quarter."""
    out = Soak()
    warm = asyncio.run(drive(srv.url, warmup, concurrency))
    bad = [r for r in warm if r.status >= 500]
    out.results += bad  # a 5xx during warm-up still counts
    out.rss_after_warmup = srv.rss()
    t0 = time.perf_counter()
    q = -(-len(todo) // 4)
    for i in range(4):
        part = asyncio.run(drive(srv.url, todo[i * q:(i + 1) * q], concurrency))
        out.results += part
        out.rss_quarters.append(srv.rss())
        out.p95_quarters.append(p95([r.seconds for r in part]))
        if progress:
            progress(f"quarter {i + 1}/4: {len(part)} requests, p95 {out.p95_quarters[-1]:.3f} s, "
                     f"RSS {out.rss_quarters[-1] / (1 << 20):.1f} MiB, {time.perf_counter() - t0:.0f} s")
    out.seconds = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------------------


def machine() -> list[str]:
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    flags = next((x for x in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if x.startswith("Flags")), "Flags: ?")
    return [f"uptime: {up}", flags]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="what `llmkit serve --model` gets (served as 'm')")
    ap.add_argument("--tiny", action="store_true", help="serve the tests' tiny random Llama as GGUF instead")
    ap.add_argument("--adapter", action="append", default=[], help="NAME=PATH: a LoRA adapter to mix in")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=None, help="default 256 (tiny) or 1024")
    ap.add_argument("--max-tokens", type=int, default=8, help="each generation asks for 1..this many tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder for the server's log, index and request log (default: a temp dir)")
    args = ap.parse_args()

    for line in machine():
        print(line)
    root = Path(args.out or tempfile.mkdtemp(prefix="llmkit-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    model = args.model
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import build_tiny_llama, write_gguf

        hf = build_tiny_llama(root / "tiny-hf")
        model = str(write_gguf(hf, root / "tiny-f32.gguf"))
    (root / "policy.yaml").write_text(POLICY)
    store = write_collection(root)
    n_ctx = args.n_ctx or (256 if args.tiny else 1024)
    opts = {"threads": args.threads, "n_ctx": n_ctx, "guard": root / "policy.yaml", "rag": store,
            "request_log": root / "requests.db"}
    names = tuple(a.split("=", 1)[0] for a in args.adapter)
    flags = " ".join([f"--model {a}" for a in args.adapter] + [f"--{k.replace('_', '-')} {v}" for k, v in opts.items()])
    print(f"server: llmkit serve --model m={model} {flags}; embedder all-minilm-l6-v2")
    srv = ServerProc.start([f"m={model}", *args.adapter], opts, root / "server.log")
    try:
        kw = dict(model="m", adapters=names, embedder="all-minilm-l6-v2", max_tokens=args.max_tokens,
                  long_prompt_words=n_ctx * 2)
        warmup = mix(args.warmup, args.seed + 1, **kw)
        todo = mix(args.requests, args.seed, **kw)
        print(f"{args.warmup} warm-up requests, then {args.requests} at concurrency {args.concurrency}")
        soak = run_soak(srv, todo, warmup, args.concurrency, progress=print)
    finally:
        rc = srv.terminate()
    for line in soak.lines():
        print(line)
    for p in soak.problems[:10]:
        print("  wrong:", p)
    print(f"server exit code after SIGTERM: {rc}; log: {root / 'server.log'}")
    for line in machine():
        print(line)


if __name__ == "__main__":
    main()
