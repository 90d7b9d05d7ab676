"""The fp32 embedder: a sentence-transformers model on CPU (default the bundled all-MiniLM-L6-v2).

Its own module, below embed.py (which picks an embedder for a spec) and onnx_embed.py (whose int8 model is
gated on agreeing with this one), so that neither imports the other back.
"""

from __future__ import annotations

from llmkit.errors import MissingExtra
from llmkit.models import embedder_path


def open_sentence_transformer(spec: str):
    """A new SentenceTransformer for `spec` (a registry name or a local folder), on CPU."""
    path = embedder_path(spec)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingExtra("sentence-transformers is not installed: pip install sentence-transformers") from None
    return SentenceTransformer(path, device="cpu")
