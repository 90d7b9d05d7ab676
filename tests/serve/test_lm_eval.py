"""lm-evaluation-harness against llmkit: a custom local YAML task (multiple choice over a local JSONL), offline,
run by lm-eval's own `hf` model on the tiny model's folder and by its `local-completions` model against a real
llmkit server on the same model. `local-completions` sends token-id prompts in batches and scores each choice
with echo + logprobs, so this is the end-to-end check of both.

The equality check serves the model on the transformers engine: it computes what lm-eval's `hf` model computes
(the same fp32 weights, the same kernels), so every log-likelihood agrees to float rounding and the accuracy must
be the same. llama.cpp's kernels differ in rounding (its logprobs agree to ~1e-3 with a forward pass,
test_prompt_forms.py), which could flip a near-tie between two choices of a random model."""

from pathlib import Path

import pytest
import yaml

TASK = Path(__file__).parent / "lmeval_task"


@pytest.fixture
def task_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = yaml.safe_load((TASK / "tiny_mc.yaml").read_text())
    cfg["dataset_kwargs"]["data_files"]["test"] = str(TASK / "tiny_mc.jsonl")  # lm-eval reads it from the cwd
    (tmp_path / "tiny_mc.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def evaluate(task_dir: Path, model: str, model_args: str) -> tuple[float, list[list[float]]]:
    """lm-eval's accuracy on the task and each item's log-likelihoods of its choices (in doc order)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=model, model_args=model_args, tasks=["llmkit_tiny_mc"], batch_size=3, device="cpu",
                          task_manager=TaskManager(include_path=str(task_dir)), log_samples=True)
    samples = sorted(out["samples"]["llmkit_tiny_mc"], key=lambda s: s["doc_id"])
    lls = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    assert len(lls) == 6 and all(len(x) == 3 and all(v < 0 for v in x) for x in lls)
    return out["results"]["llmkit_tiny_mc"]["acc,none"], lls


def server_args(url: str, model: str, tokenizer: Path) -> str:
    """local-completions against llmkit serve: token-id prompts, scored with echo + logprobs."""
    return (f"model={model},base_url={url}/v1/completions,tokenizer={tokenizer},tokenizer_backend=huggingface,"
            "tokenized_requests=True,max_retries=1")


def test_a_custom_task_gives_the_same_accuracy_on_the_artifact_and_on_the_server(task_dir, tiny_llama):
    from serve_helpers import MODEL, make_state, running

    acc_hf, ll_hf = evaluate(task_dir, "hf", f"pretrained={tiny_llama},dtype=float32")
    with running(make_state(tiny_llama, engine="transformers")) as srv:
        acc_srv, ll_srv = evaluate(task_dir, "local-completions", server_args(srv.url, MODEL, tiny_llama))
    for a, b in zip(ll_hf, ll_srv):
        assert a == pytest.approx(b, abs=1e-3)
    assert acc_srv == acc_hf


@pytest.mark.integration
def test_the_bundled_model_on_its_artifact_and_on_the_default_server(task_dir):
    """What a user runs: the bundled GGUF served as it is by default (llama.cpp, batching, Q4_1 served as Q8_0)
    against lm-eval's hf model on the float folder it dequantizes to. Quantization moves each log-likelihood by up
    to ~0.3 nats (measured); the closest call (0.4 nats between two choices) still goes the same way on both, so
    the accuracy is the same: 5 of 6 right."""
    from serve_helpers import running

    from llmkit.config import ServeConfig
    from llmkit.models import hf_folder, resolve_model
    from llmkit.serve import load_state

    folder = hf_folder(resolve_model("smollm2-135m-instruct"), progress=False)
    acc_hf, ll_hf = evaluate(task_dir, "hf", f"pretrained={folder},dtype=float32")
    cfg = ServeConfig(engine="llamacpp", threads=2, n_ctx=512, max_inflight=4, embedder=None)
    with running(load_state(cfg)) as srv:
        acc_srv, ll_srv = evaluate(task_dir, "local-completions", server_args(srv.url, "smollm2-135m-instruct", folder))
    for a, b in zip(ll_hf, ll_srv):
        assert a == pytest.approx(b, abs=0.5)
    assert acc_srv == acc_hf >= 0.8
