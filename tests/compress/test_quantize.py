"""llama.cpp's quantizer driven from Python: the importance matrix covers every matrix and is really used."""

import pytest
from gguf import GGUFReader

from llmkit.compress.gguf import write_f16
from llmkit.compress.quantize import importance, quantize, tensor_types
from llmkit.errors import UnsupportedModel

TEXTS = ["The quick brown fox jumps over the lazy dog. In 2024 there were 12 foxes.",
         "Support assistant: please restart the router, then check the status light."]


def test_importance_matrix_covers_every_matrix_and_changes_the_4_bit_rounding(tiny_wide, tmp_path):
    f16 = tmp_path / "m.f16.gguf"
    write_f16(tiny_wide, f16, name="m")
    matrices = {t.name: int(t.shape[0]) for t in GGUFReader(str(f16)).tensors if len(t.shape) == 2}  # ne[0] = in
    imatrix = importance(tiny_wide, TEXTS)
    assert set(imatrix) == set(matrices)  # token_embd too: the tied output matmul runs on it
    assert all(imatrix[n].shape == (cols,) and (imatrix[n] > 0).all() for n, cols in matrices.items())
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    quantize(f16, plain, "q4_k")
    quantize(f16, weighted, "q4_k", imatrix=imatrix)
    assert tensor_types(plain) == tensor_types(weighted)  # same types, different rounding
    assert plain.read_bytes() != weighted.read_bytes()


def test_unknown_type_is_refused(tiny_llama, tmp_path):
    f16 = tmp_path / "m.f16.gguf"
    write_f16(tiny_llama, f16, name="m")
    with pytest.raises(UnsupportedModel, match="supported: f16, q8_0, q4_0, q4_k"):
        quantize(f16, tmp_path / "x.gguf", "q3_k")
    assert not (tmp_path / "x.gguf").exists()
