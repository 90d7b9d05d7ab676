"""What the server reliability tests serve: the tiny GGUF on llama.cpp (the default engine) with everything on —
a rag collection, guard rails, a request log (for /v1/feedback), the bundled MiniLM embedder — either in this
process (serve_helpers.running) or as a real `llmkit serve` subprocess (bench/soak.py starts those).

The guard policy uses the rails that need no trained classifier (pii, secrets, topics, length), so the suite
does not train the injection/toxicity heads (2-4 min); `bomb` is a denied topic, so a request can be blocked.
(A module of its own, not a conftest.py, so that its name is unique in tests/.)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from soak import POLICY, write_collection  # noqa: E402  (bench/soak.py: the soak's driver, shared with the bench)

__all__ = ["POLICY", "adapters_on_gguf", "serve_dir", "write_collection"]


def serve_dir(root: Path) -> dict[str, str]:
    """A policy file, a rag collection 'help' and a request log path under `root`: the server's options."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "policy.yaml").write_text(POLICY)
    store = write_collection(root)
    return {"guard": str(root / "policy.yaml"), "rag": str(store), "request_log": str(root / "requests.db")}


def adapters_on_gguf(adapters: dict[str, Path], gguf: Path, root: Path) -> dict[str, Path]:
    """The tiny model's LoRA adapters (conftest's style_adapters) with their recorded base set to the GGUF the
    server runs, so llama.cpp serves them on it (converted to its adapter format on first use)."""
    out = {}
    for name, folder in adapters.items():
        mine = shutil.copytree(folder, root / name, dirs_exist_ok=True)
        cfg = json.loads((mine / "adapter_config.json").read_text())
        (mine / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(gguf)}))
        out[name] = mine
    return out
