"""train/device.py: which device a training process takes (the decision, tested without a GPU) and the helpers
that put a batch and autocast there, run on the CPU."""

from __future__ import annotations

import pytest

from llmkit.config import TrainConfig
from llmkit.errors import ConfigError
from llmkit.train.device import autocast, backend, choose, place, to_device


@pytest.mark.parametrize(("requested", "cuda", "count", "rank", "want"), [
    ("auto", False, 0, None, "cpu"),  # no GPU: the CPU, as before
    ("auto", True, 0, None, "cpu"),  # a CUDA build that sees no device
    ("auto", True, 2, None, "cuda:0"),  # one process: the first GPU
    ("auto", True, 4, 3, "cuda:3"),  # torchrun: the process's LOCAL_RANK
    ("cpu", True, 4, 1, "cpu"),  # the recipe says cpu: never the GPU
    ("cuda", True, 1, 0, "cuda:0"),
])
def test_choose(requested, cuda, count, rank, want):
    assert choose(requested, cuda_available=cuda, device_count=count, local_rank=rank) == want


def test_choose_refuses_what_cannot_run():
    with pytest.raises(ConfigError, match="no CUDA device"):
        choose("cuda", cuda_available=False, device_count=0, local_rank=None)
    with pytest.raises(ConfigError, match="LOCAL_RANK 2 but the machine has 2"):
        choose("auto", cuda_available=True, device_count=2, local_rank=2)
    with pytest.raises(ConfigError, match="not one of"):
        choose("gpu", cuda_available=True, device_count=1, local_rank=None)


def test_the_recipe_field_and_this_machine(monkeypatch):
    import torch

    assert TrainConfig().device == "auto" and TrainConfig(device="cpu").device == "cpu"
    with pytest.raises(ValueError):
        TrainConfig(device="gpu")
    monkeypatch.setenv("LOCAL_RANK", "0")
    dev = place("cpu")
    assert dev == torch.device("cpu") and backend("cpu") == "gloo"
    if not torch.cuda.is_available():  # this box: auto is the CPU, and cuda is refused up front
        assert place("auto") == torch.device("cpu") and backend("auto") == "gloo"
        with pytest.raises(ConfigError):
            place("cuda")
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "real_tokens": 6}
    moved = to_device(batch, dev)
    assert moved["input_ids"].device == dev and moved["real_tokens"] == 6
    with autocast(dev, True):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16  # CPU autocast took the matmul to bf16
    with autocast(dev, False):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
