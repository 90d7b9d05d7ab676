"""The built-in `rag` task: `llmkit rag eval`'s recall@k and MRR, and answer faithfulness, as a task of the suite
(the tiny model answers and judges itself; its verdicts are noise, recorded honestly)."""

import json
import sys
from pathlib import Path

import pytest

from llmkit.cli import main
from llmkit.config import EvalConfig, RagConfig
from llmkit.errors import DataError
from llmkit.eval import evaluate
from llmkit.rag import evaluate as rag_evaluate
from llmkit.rag import index
from llmkit.rag.judge import verdict

sys.path.insert(0, str(Path(__file__).parent.parent / "rag"))
from rag_helpers import write_docs  # noqa: E402


@pytest.fixture(scope="module")
def rag_index(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rag")
    write_docs(tmp / "docs")
    index(RagConfig(sources=[str(tmp / "docs")], collection="help"), tmp / "idx", progress=False)
    q = tmp / "q.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "How long do I hold the reset button?", "source": "*router.md", "heading": "Factory reset"},
        {"question": "Where is the MAC address?", "source": "*modem.txt"},
        {"question": "What does amber mean?", "source": "*router.md", "heading": "Lights"}]))
    return tmp / "idx", q


def test_rag_metrics_as_a_task_match_rag_eval(rag_index, tiny_llama, tmp_path):
    idx, q = rag_index
    cfg = EvalConfig(tasks=["rag"], rag_index=str(idx), rag_questions=str(q), rag_top_k=1, max_tokens=6)
    m = evaluate(cfg, str(tiny_llama), tmp_path / "e", progress=False)["metrics"]["model"]
    ref = rag_evaluate(idx, q, top_k=1, modes=("hybrid",))["hybrid"]
    assert m["rag.recall@1"] == ref["recall@1"] and m["rag.mrr"] == ref["mrr"] and m["rag.items"] == 3
    items = [json.loads(x) for x in (tmp_path / "e" / "items.jsonl").read_text().splitlines()]
    for it in items:  # each answer judged by the target itself; parsed or counted as unparsed
        said = verdict(it["verdicts"][0])
        assert it["scores"]["unparsed"] == float(said is None) and it["judge"] == "the target itself"
        assert it["scores"].get("faithfulness") == (None if said is None else float(said))
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["inputs"][f"task:rag:{idx}"]["artifact"] == "rag-index"  # lineage to the index it scored
    judged = [i["scores"]["faithfulness"] for i in items if "faithfulness" in i["scores"]]
    assert m.get("rag.faithfulness") == (pytest.approx(sum(judged) / len(judged)) if judged else None)


def test_rag_task_needs_its_index_and_questions(tmp_path, capsys):
    with pytest.raises(DataError, match="eval.rag_index and eval.rag_questions"):
        evaluate(EvalConfig(tasks=["rag"]), "x", tmp_path / "e", progress=False)
    assert main(["eval", "--model", "x", "--tasks", "rag", "--rag-index", str(tmp_path), "--rag-questions",
                 str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "e")]) == 1
    assert "is not an index folder" in capsys.readouterr().err
