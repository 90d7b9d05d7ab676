"""Many LoRA adapters on one base, through the server: a request's `model` picks the base or an adapter; the
llama.cpp engine loads adapters on first use (converted to its GGUF format once) and answers side by side."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

from serve_helpers import running

from llmkit.config import ServeConfig
from llmkit.serve import load_state
from llmkit.serve.auth import KeyStore


def test_two_adapters_on_one_gguf_base_answer_in_their_styles(tiny_gguf, style_adapters, tmp_path):
    specs = [f"base={tiny_gguf}"]
    for name, folder in style_adapters.items():
        mine = shutil.copytree(folder, tmp_path / name)  # recorded base: the GGUF this server runs
        cfg = json.loads((mine / "adapter_config.json").read_text())
        (mine / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(tiny_gguf)}))
        specs.append(f"{name}={mine}")
    state = load_state(ServeConfig(engine="llamacpp", threads=1, n_ctx=256, max_inflight=4, embedder=None),
                       specs, keys=KeyStore([]))
    with running(state) as srv:
        client = srv.openai()
        assert {m.id for m in client.models.list().data} >= {"base", "pirate", "formal"}

        def ask(model):
            r = client.chat.completions.create(
                model=model, max_tokens=24, temperature=0,
                messages=[{"role": "user", "content": "Question 99: my router R2 is slow."}])
            return r.choices[0].message.content

        with ThreadPoolExecutor(3) as pool:
            replies = dict(zip(["pirate", "formal", "base"], pool.map(ask, ["pirate", "formal", "base"])))
        assert replies["pirate"].startswith("Ahoy matey!"), replies
        assert replies["formal"].startswith("Dear customer"), replies
        assert not replies["base"].startswith(("Ahoy", "Dear")), replies
