"""`llmkit rag index|query|eval` in-process, the rag stage of `llmkit run`, and retrieval quality on the example set."""

import json
from pathlib import Path

from rag_helpers import write_docs

from llmkit.cli import main
from llmkit.config import parse_recipe
from llmkit.pipeline import STAGES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "support"


def test_cli_index_query_and_errors(tmp_path, capsys):
    docs = write_docs(tmp_path / "docs")
    store = str(tmp_path / "store")
    assert main(["rag", "index", str(docs), "--collection", "help", "--store", store, "--quiet"]) == 0
    assert "indexed 3 files" in capsys.readouterr().out
    assert main(["rag", "query", "where is the MAC address", "--collection", "help", "--store", store,
                 "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[1] docs/modem.txt  (chars 0-") and "[2] " in out and "[3] " not in out
    assert main(["rag", "query", "reset", "--collection", "help", "--store", store, "--json", "--top-k", "1"]) == 0
    [hit] = json.loads(capsys.readouterr().out)
    assert hit["source"] == "docs/router.md" and hit["rank"] == 1
    assert main(["rag", "query", "reset", "--collection", "nope", "--store", store]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a rag index" in err and len(err.strip().splitlines()) == 1
    assert main(["rag", "index", str(tmp_path / "missing"), "--collection", "help", "--store", store]) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_example_questions_recall(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["rag", "index", str(EXAMPLES / "docs"), "--collection", "nimbus", "--store", store, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["rag", "eval", str(EXAMPLES / "rag_questions.jsonl"), "--collection", "nimbus", "--store", store,
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["hybrid"]["questions"] == 20
    assert r["hybrid"]["recall@4"] >= 0.95 and r["hybrid"]["mrr"] >= 0.85


def test_recipe_stage_runs_then_skips(tmp_path):
    write_docs(tmp_path / "docs")
    recipe = parse_recipe("name: r\nrag: {sources: [docs], collection: help}\n", base_dir=tmp_path)
    lines: list[str] = []
    first = STAGES["rag"](recipe, recipe.run_dir / "rag", False, lines.append)
    again = STAGES["rag"](recipe, recipe.run_dir / "rag", False, lines.append)
    assert (first.status, again.status) == ("ran", "skipped")
    assert "3 files" in lines[0] and "collection 'help'" in lines[0]
    (tmp_path / "docs" / "modem.txt").write_text("The modem has a new firmware.")
    assert STAGES["rag"](recipe, recipe.run_dir / "rag", False, lines.append).status == "ran"
    assert "1 embedded, 2 unchanged" in lines[-1]
