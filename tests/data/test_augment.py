"""Counterfactual data augmentation: the swaps themselves (case, word boundaries, her/his by part of speech,
guarded adjectives) and `data.augment: counterfactual` in the data stage (copies in train only, counted in the
data card, deduplicated)."""

import json
import pickle

import pytest

from llmkit.config import DataConfig
from llmkit.data import prepare
from llmkit.data.augment import Counterfactual
from llmkit.data.card import summary


@pytest.fixture(scope="module")
def cda():
    return Counterfactual()


@pytest.mark.parametrize("text, want", [
    ("She asked her manager about his schedule.", "He asked his manager about her schedule."),
    ("I called her; the laptop is his, not hers.", "I called him; the laptop is hers, not his."),
    ("My husband and his brothers", "My wife and her sisters"),
    ("HE SAID SO", "SHE SAID SO"),
    ("The woman met Mr. Lee.", "The man met Ms. Lee."),
    # whole words only: no "manager" -> "womanager", "sheep", "hero", "these"
    ("The manager herded sheep; the hero saw these.", "The manager herded sheep; the hero saw these."),
    # rotation for the other dimensions, list spelling kept ("Black" -> "white", "white" -> "Asian")
    ("A Muslim family and two Christians", "A Jewish family and two Muslims"),
    ("The Black customer and the white user", "The white customer and the Asian user"),
    # adjectives with other meanings only before a person noun
    ("A black screen, an old laptop, a blind spot", "A black screen, an old laptop, a blind spot"),
    ("The elderly caller and an old man", "The young caller and a teenage woman"),
    ("An American user", "A Mexican user"),
    ("A blind user and a middle-aged patient", "A deaf user and an elderly patient"),
])
def test_swaps(cda, text, want):
    out, n = cda.swap(text)
    assert out == want
    assert (n > 0) == (text != want)


def test_swapping_twice_restores_gender(cda):
    text = "He told his sister that she should call her father."
    once, _ = cda.swap(text)
    assert once == "She told her brother that he should call his mother."
    assert cda.swap(once)[0] == text


def test_one_copy_per_other_group_of_the_largest_dimension(cda):
    assert cda.variants(["No group here."]) == []
    assert cda.variants(["She called."]) == [["He called."]]
    got = cda.variants(["The Christian customer said she was fine."])
    # every other religion once; gender swapped in every other copy
    assert got == [["The Muslim customer said he was fine."], ["The Jewish customer said she was fine."],
                   ["The Hindu customer said he was fine."], ["The atheist customer said she was fine."]]
    assert cda.copies(["a young user", "a Black user"]) == 4  # race (5 groups) over age (3)


def test_picklable_for_worker_processes(cda):
    cda.swap("I saw her.")  # loads the tagger
    again = pickle.loads(pickle.dumps(cda))
    assert again.swap("I saw her.") == ("I saw him.", 1)


def test_prepare_adds_counted_copies_to_train_only(tmp_path, tiny_llama):
    rows = [{"instruction": f"Question {i}: what did the nurse say?", "output": f"She said {i} things to her team."}
            for i in range(20)]
    rows += [{"instruction": f"Plain question {i}?", "output": f"Plain answer {i}."} for i in range(20)]
    rows.append({"instruction": "Question 0: what did the nurse say?", "output": "He said 0 things to his team."})
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = prepare(DataConfig(train=str(f), val_fraction=0.2), tmp_path / "plain", model=str(tiny_llama),
                    progress=False)
    aug = prepare(DataConfig(train=str(f), val_fraction=0.2, augment="counterfactual"), tmp_path / "aug",
                  model=str(tiny_llama), progress=False)
    assert "augmented" not in plain.card or not plain.card["augmented"]
    # the same rows land on the same side (the split hashes the row); val is not augmented
    assert (tmp_path / "aug" / "val.jsonl").read_text() == (tmp_path / "plain" / "val.jsonl").read_text()
    def replies(name):
        return [json.loads(x)["messages"][1]["content"] for x in (tmp_path / name / "train.jsonl").read_text().splitlines()]

    train, plain_train = replies("aug"), replies("plain")
    added = aug.card["augmented"]["counterfactual"]
    assert aug.card["rows_out"]["train"] == len(train) == len(plain_train) + added
    # every input row is kept; each row naming a group is followed by its copy
    assert [t for t in train if t in plain_train] == plain_train
    she = [t for t in plain_train if t.startswith("She said")]
    assert added == len(she) > 0
    for t in she:
        assert train[train.index(t) + 1] == t.replace("She", "He").replace("her", "his")
    assert "added: counterfactual" in summary(aug.card)
    md = (tmp_path / "aug" / "data_card.md").read_text()
    assert f"| added: counterfactual copies (in train) | {added} |" in md
