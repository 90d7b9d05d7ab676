"""transformers engine: HF folders (and, through `hf_folder`, GGUFs converted to float weights).

Slower than llama.cpp on CPU (5–13 tok/s at batch 1, mostly Python overhead) but runs any transformers model,
and is the engine that sees PEFT adapters and fine-tuned folders before they are exported.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from llmkit.engines import GenParams, default_threads
from llmkit.models import ModelRef, hf_folder


class TransformersEngine:
    name = "transformers"

    def __init__(self, model: ModelRef, n_threads: int | None = None, dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(n_threads or default_threads())
        self.model = model
        if model.kind == "adapter":  # a PEFT adapter: load its base, then apply it
            from peft import PeftModel

            from llmkit.models import resolve_model

            assert model.base is not None
            folder = hf_folder(resolve_model(model.base))
            base = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
            self.lm = PeftModel.from_pretrained(base, str(model.path)).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(model.path if (model.path / "tokenizer.json").is_file() else folder)
            return
        folder = hf_folder(model)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.lm = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()

    def _generate(self, inputs: dict, params: GenParams) -> Iterator[str]:
        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sample = params.temperature > 0
        kwargs = dict(**inputs, max_new_tokens=params.max_tokens, do_sample=sample, streamer=streamer,
                      pad_token_id=self.tokenizer.pad_token_id)
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        error: list[BaseException] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    self.lm.generate(**kwargs)
            except BaseException as e:  # re-raised in the caller's thread below
                error.append(e)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            cut = min((text.find(s) for s in params.stop if s in text), default=-1)
            if cut >= 0:  # like OpenAI, the stop string itself is not returned
                yield piece[: max(0, len(piece) - (len(text) - cut))]
                break
            if piece:
                yield piece
        thread.join()
        if error:
            raise error[0]

    def chat(self, messages: list[dict], params: GenParams) -> Iterator[str]:
        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)
        yield from self._generate(dict(inputs), params)

    def complete(self, prompt: str, params: GenParams) -> Iterator[str]:
        yield from self._generate(dict(self.tokenizer(prompt, return_tensors="pt")), params)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def close(self) -> None:
        del self.lm
