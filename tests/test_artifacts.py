import json

import pytest

from llmkit import artifacts
from llmkit.errors import ArtifactError


def test_build_publishes_atomically_with_manifest(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello")
    inputs = {"raw": artifacts.input_ref(src)}
    out = tmp_path / "a"
    with artifacts.build("demo", out, {"k": 1}, inputs) as b:
        (b.tmp / "x.txt").write_text("x")
        assert not out.exists()  # nothing under the real name until the build finishes
        b.metrics["rows"] = 1
    m = artifacts.read_manifest(out)
    assert m["kind"] == "demo" and m["status"] == "finished" and m["metrics"] == {"rows": 1}
    assert m["inputs"]["raw"]["sha256"] == artifacts.sha256_file(src)
    assert "python" in m["versions"] and m["seconds"] >= 0
    assert artifacts.finished(out, artifacts.fingerprint("demo", {"k": 1}, inputs))
    assert not artifacts.finished(out, artifacts.fingerprint("demo", {"k": 2}, inputs))


def test_failed_build_leaves_previous_artifact_untouched(tmp_path):
    out = tmp_path / "a"
    with artifacts.build("demo", out, {}, {}) as b:
        (b.tmp / "x.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with artifacts.build("demo", out, {"new": True}, {}) as b:
            (b.tmp / "x.txt").write_text("new, half written")
            raise RuntimeError("killed")
    assert (out / "x.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temp folder left behind


def test_leftovers_of_a_killed_build_are_swept(tmp_path):
    out = tmp_path / "a"
    (tmp_path / ".a.tmp-99999").mkdir()  # what kill -9 during a build leaves
    with artifacts.build("demo", out, {}, {}):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_folder_hash_changes_with_content_not_manifest(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_text("1")
    h1 = artifacts.sha256_path(d)
    (d / "manifest.json").write_text("{}")
    assert artifacts.sha256_path(d) == h1
    (d / "f").write_text("2")
    assert artifacts.sha256_path(d) != h1


def test_lineage_follows_artifact_inputs(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"a": 1}\n')
    with artifacts.build("data", tmp_path / "data", {}, {"train": artifacts.input_ref(raw)}):
        pass
    with artifacts.build("train", tmp_path / "model", {}, {"data": artifacts.input_ref(tmp_path / "data")}):
        pass
    chain = artifacts.lineage(tmp_path / "model")
    assert [(d, m["kind"]) for d, m in chain] == [(0, "train"), (1, "data"), (2, "input")]
    assert chain[2][1]["path"] == str(raw)


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text('{"kind": ')
    with pytest.raises(ArtifactError, match=r"manifest.json line 1: not valid JSON"):
        artifacts.read_manifest(tmp_path)


def test_write_json_atomic(tmp_path):
    p = tmp_path / "m.json"
    artifacts.write_json_atomic(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["m.json"]
