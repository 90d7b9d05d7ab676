"""Reward models on the tiny model: a separable toy preference is learned (held-out pairwise accuracy well above
chance), the artifact loads back as a reward function that ranks unseen pairs, and the scores pool at the last
real token whatever the padding."""

import json

import pytest
import torch

from llmkit.config import DataConfig, TrainConfig
from llmkit.data import prepare
from llmkit.train import finetune

CFG = dict(method="reward", epochs=4, lr=1e-2, batch_size=4, max_length=96, eval_every=100, save_every=100,
           precision="fp32")


def _pairs(n, offset=0):
    # chosen replies are polite and mention the product; rejected ones are curt: separable by their words
    return [{"prompt": f"My router R{i % 5} drops the line {i} times a day.",
             "chosen": f"Thanks for asking! Restart router R{i % 5}, then wait {i % 7} minutes. Happy networking!",
             "rejected": f"no idea {i % 3}"} for i in range(offset, offset + n)]


@pytest.fixture(scope="module")
def pref_dataset(tiny_llama, tmp_path_factory):
    d = tmp_path_factory.mktemp("rm")
    (d / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _pairs(48)))
    prepare(DataConfig(train=str(d / "p.jsonl"), val_fraction=0.25), d / "data", model=str(tiny_llama), progress=False)
    return d / "data"


def test_reward_model_learns_a_separable_preference(tiny_llama, pref_dataset, tmp_path):
    from llmkit.train.reward import RewardModel

    r = finetune(TrainConfig(**CFG), pref_dataset, str(tiny_llama), tmp_path / "rm", progress=False)
    m = r["metrics"]
    assert m["val_pairwise_accuracy"] >= 0.9 and m["val_score_margin"] > 0  # chance is 0.5
    assert m["train_loss_last"] < m["train_loss_first"]
    manifest = json.loads((tmp_path / "rm" / "manifest.json").read_text())
    assert manifest["outputs"]["head"] == "reward" and manifest["metrics"]["val_pairwise_accuracy"] == m["val_pairwise_accuracy"]
    rm = RewardModel.load(tmp_path / "rm")
    fresh = _pairs(10, offset=1000)  # never seen in training
    good = rm([p["prompt"] for p in fresh], [p["chosen"] for p in fresh])
    bad = rm([p["prompt"] for p in fresh], [p["rejected"] for p in fresh])
    assert sum(g > b for g, b in zip(good, bad)) >= 9
    # the same artifact as a GRPO reward, named in a recipe
    from llmkit.config import RewardConfig
    from llmkit.train.rewards import build, score

    rs = build([RewardConfig(fn="reward_model", path=str(tmp_path / "rm"))], None)
    per, total = score(rs, [fresh[0]["prompt"]] * 2, [fresh[0]["chosen"], fresh[0]["rejected"]], {})
    assert per[0].tolist() == pytest.approx([good[0], bad[0]], abs=1e-4) and total[0] > total[1]


def test_scores_pool_at_the_last_real_token(tiny_llama):
    from llmkit.train.common import collate
    from llmkit.train.reward import last_index, scores
    from llmkit.train.sft import load_model

    model = load_model(TrainConfig(**CFG), tiny_llama).eval()
    seqs = [{"input_ids": ids, "labels": ids, "position_ids": list(range(len(ids)))}
            for ids in ([5, 6, 7, 8, 9, 10], [11, 12, 13])]
    batch = collate(seqs, pad_id=2)
    assert last_index(batch["position_ids"]).tolist() == [5, 2]
    with torch.no_grad():
        both = scores(model, batch)
        alone = scores(model, collate(seqs[1:], pad_id=2))
    torch.testing.assert_close(both[1], alone[0], rtol=1e-4, atol=1e-5)  # padding changes nothing


class Scripted:
    """A model under evaluation that answers every prompt in one fixed style (the reward model scoring it is real)."""

    concurrency = 1

    def __init__(self, name, reply):
        self.name, self.reply = name, reply

    def ref(self):
        return {"path": self.name, "sha256": self.name}

    def chat_prompt(self, messages):
        return messages[-1]["content"]

    def generate(self, messages, max_tokens):
        i = int(messages[-1]["content"].split(" the line ")[1].split()[0])
        return self.reply(i)

    def loglikelihood(self, context, continuation):
        raise AssertionError("not asked: generate items only")

    def close(self):
        pass


def test_reward_model_as_an_eval_metric_ranks_models_and_gates(tiny_llama, pref_dataset, tmp_path):
    from llmkit.config import EvalConfig
    from llmkit.errors import ConfigError, GateFailed
    from llmkit.eval import evaluate

    finetune(TrainConfig(**CFG), pref_dataset, str(tiny_llama), tmp_path / "rm", progress=False)
    fresh = _pairs(8, offset=2000)
    (tmp_path / "ask.jsonl").write_text("".join(json.dumps({"type": "generate", "prompt": p["prompt"],
                                                            "checks": {"contains": "router"}}) + "\n"
                                                for p in fresh))
    polite = Scripted("polite", lambda i: _pairs(1, offset=i)[0]["chosen"])
    curt = Scripted("curt", lambda i: _pairs(1, offset=i)[0]["rejected"])
    cfg = EvalConfig(tasks=[str(tmp_path / "ask.jsonl")], reward_model=str(tmp_path / "rm"),
                     gates={"ask.reward": ">= baseline"}, interpret=[],
                     baseline="scripted")  # the gate's baseline; the Target given to evaluate takes its place
    m = evaluate(cfg, polite, tmp_path / "eval", baseline=curt, progress=False)["metrics"]
    assert m["model"]["ask.reward"] > m["baseline"]["ask.reward"] and m["delta"]["ask.reward"] > 0
    assert m["passed"]
    items = [json.loads(x) for x in (tmp_path / "eval" / "items.jsonl").read_text().splitlines()]
    assert all(isinstance(r["scores"]["reward"], float) for r in items) and len(items) == 16
    with pytest.raises(GateFailed):  # the curt model against the polite one fails the same gate
        evaluate(cfg, curt, tmp_path / "eval2", baseline=polite, progress=False)
    with pytest.raises(ConfigError, match="not a reward model artifact"):
        evaluate(cfg.model_copy(update={"reward_model": str(pref_dataset)}), polite, tmp_path / "eval3", baseline=curt,
                 progress=False)
