"""Tasks: loaders against the real GLUE/SuperGLUE files (figures from ../shared/data/README.md),
prompts, and the errors users see for bad paths and files."""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path

import pytest

from edgezo import tasks
from edgezo.errors import EdgezoError
from edgezo.tasks import TASKS, Example, get_task, load_examples


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("EDGEZO_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (root / "sst2").is_dir():
        pytest.skip(f"benchmark data not found at {root} (set $EDGEZO_DATA)")
    return root


@pytest.fixture(autouse=True)
def _fresh_warning_state(monkeypatch):
    monkeypatch.setattr(tasks, "_WARNED", set())


def _load(name, root, split):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_examples(get_task(name), root, split)


@pytest.mark.parametrize(
    "name,split,count,label_counts",
    [
        ("sst2", "train", 67_349, {0: 29_780, 1: 37_569}),
        ("sst2", "dev", 872, {0: 428, 1: 444}),
        ("rte", "train", 2_490, {0: 1_249, 1: 1_241}),  # 0 = entailment
        ("rte", "dev", 277, {0: 146, 1: 131}),
        ("wic", "train", 5_428, {0: 2_714, 1: 2_714}),
        ("wic", "dev", 638, {0: 319, 1: 319}),
    ],
)
def test_counts_and_label_balance(data_root, name, split, count, label_counts):
    examples = _load(name, data_root, split)
    assert len(examples) == count
    assert Counter(e.label for e in examples) == label_counts


def test_boolq_split_of_val_is_deterministic_disjoint_and_complete(data_root):
    with pytest.warns(UserWarning, match="splitting val.jsonl"):
        train = load_examples(get_task("boolq"), data_root, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process, not per call
        dev = load_examples(get_task("boolq"), data_root, "dev")
        again = load_examples(get_task("boolq"), data_root, "dev")
    assert len(train) + len(dev) == 3_270
    assert len(dev) == 654  # idx 0, 5, ..., 3265
    assert dev == again
    key = lambda e: (e.fields["question"], e.fields["passage"])  # noqa: E731
    assert not {key(e) for e in train} & {key(e) for e in dev}
    labels = Counter(e.label for e in train + dev)
    assert labels == {1: 2_033, 0: 1_237}


def test_boolq_uses_train_jsonl_when_present(tmp_path):
    row = {"question": "is it", "passage": "T -- p", "idx": 0, "label": True}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "label": False}) + "\n")
    (tmp_path / "val.jsonl").write_text(json.dumps(row) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [e.label for e in load_examples(get_task("boolq"), tmp_path, "train")] == [1, 0]
        assert len(load_examples(get_task("boolq"), tmp_path, "dev")) == 1


def test_sst2_prompt_for_first_example(data_root):
    first = _load("sst2", data_root, "train")[0]
    assert first == Example({"sentence": "hide new secretions from the parental units"}, 0)
    task = get_task("sst2")
    assert task.prompt(first, "causal") == "Review: hide new secretions from the parental units\nSentiment:"
    assert task.prompt(first, "mlm", "<mask>") == "hide new secretions from the parental units It was <mask>."
    assert task.verbalizers("causal")[first.label] == " negative"
    assert task.verbalizers("mlm") == (" terrible", " great")


def test_rte_fields_labels_and_quote_row(data_root):
    dev = _load("rte", data_root, "dev")
    assert dev[0].fields["hypothesis"] == "Christopher Reeve had an accident."
    assert dev[0].label == 1  # not_entailment
    prompt = get_task("rte").prompt(dev[0], "causal")
    assert prompt.endswith("\nQuestion: Christopher Reeve had an accident. True or False?\nAnswer:")
    assert get_task("rte").verbalizers("causal")[dev[0].label] == " False"
    # Train row 2164's premise starts with a literal quote: QUOTE_NONE keeps it verbatim.
    assert _load("rte", data_root, "train")[2164].fields["premise"].startswith('"')


def test_wic_and_boolq_prompts(data_root):
    wic = _load("wic", data_root, "dev")[0]  # val.jsonl row 1
    assert get_task("wic").prompt(wic, "causal") == (
        'Does the word "class" have the same meaning in these two sentences?\n'
        "An emerging professional class.\n"
        "Apologizing for losing your temper, even though you were badly provoked, showed real class.\n"
        "Answer:"
    )
    assert wic.label == 0
    boolq = _load("boolq", data_root, "dev")[0]
    assert get_task("boolq").prompt(boolq, "causal").startswith("Ethanol fuel -- ")
    assert "\nQuestion: does ethanol take more energy make that produces?\nAnswer:" in get_task("boolq").prompt(
        boolq, "causal"
    )


def test_data_dir_may_be_task_folder_or_parent(data_root):
    assert _load("rte", data_root / "rte", "dev") == _load("rte", data_root, "dev")
    assert _load("wic", str(data_root), "val") == _load("wic", data_root, "dev")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_has_both_kinds(name):
    task = get_task(name)
    ex = Example({k: "{x} }{ {0}" for k in ("sentence", "premise", "hypothesis", "passage",
                                            "question", "word", "sentence1", "sentence2")}, 0)
    for kind in ("causal", "mlm"):
        verbs = task.verbalizers(kind)
        assert len(verbs) == len(task.label_names) == 2
        assert all(v.startswith(" ") for v in verbs)
        text = task.prompt(ex, kind, mask_token="[MASK]")
        assert "{x} }{ {0}" in text  # braces in raw text survive untouched
    assert task.prompt(ex, "mlm", "[MASK]").count("[MASK]") == 1


def test_braces_in_real_rows(tmp_path):
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n{oops} a {0} film } \t1\n")
    [ex] = load_examples(get_task("sst2"), tmp_path, "dev")
    assert get_task("sst2").prompt(ex, "causal") == "Review: {oops} a {0} film }\nSentiment:"


def test_unknown_names_and_kinds():
    with pytest.raises(EdgezoError, match="sst2, rte, boolq, wic"):
        get_task("mnli")
    assert get_task("SST2") is TASKS["sst2"]
    ex = Example({"sentence": "x"}, 0)
    with pytest.raises(EdgezoError, match="causal, mlm"):
        get_task("sst2").prompt(ex, "seq2seq")
    with pytest.raises(EdgezoError, match="mask_token"):
        get_task("sst2").prompt(ex, "mlm")
    with pytest.raises(EdgezoError, match="causal, mlm"):
        get_task("sst2").verbalizers("encoder")


def test_unknown_split(tmp_path):
    with pytest.raises(EdgezoError, match="'train' or 'dev'"):
        load_examples(get_task("sst2"), tmp_path, "test")


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(EdgezoError, match="does not exist"):
        load_examples(get_task("rte"), tmp_path / "nope", "train")
    with pytest.raises(EdgezoError, match=r"missing data file .*train\.tsv"):
        load_examples(get_task("rte"), tmp_path, "train")
    with pytest.raises(EdgezoError, match=r"missing data file .*val\.jsonl"):
        load_examples(get_task("wic"), tmp_path, "dev")


@pytest.mark.parametrize(
    "task,filename,content,message",
    [
        ("sst2", "train.tsv", "sentence\tlabel\ngood \t1\nbad \t2\n", r"train\.tsv:3: label must be 0 or 1"),
        ("sst2", "train.tsv", "sentence\tlabel\ngood \t1\nno tab here\n", r"train\.tsv:3: expected 2"),
        ("sst2", "train.tsv", "text\tlabel\ngood \t1\n", r"train\.tsv:1: expected header"),
        ("rte", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\t\n", r"dev\.tsv:2: expected 4"),
        ("rte", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tneutral\n", r"dev\.tsv:2: label must be"),
        ("wic", "train.jsonl", '{"word": "a", "sentence1": "b", "sentence2": "c", "label": true}\n{oops\n',
         r"train\.jsonl:2: invalid JSON"),
        ("wic", "train.jsonl", '{"word": "a", "sentence1": "b", "label": true}\n', r"train\.jsonl:1: expected a JSON"),
        ("boolq", "val.jsonl", '{"question": "q", "passage": "p", "idx": 0, "label": 1}\n',
         r"val\.jsonl:1: label must be true or false"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, task, filename, content, message):
    (tmp_path / filename).write_text(content)
    split = "dev" if filename.startswith(("dev", "val")) else "train"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(EdgezoError, match=message) as err:
            load_examples(get_task(task), tmp_path, split)
    assert "\n" not in str(err.value)


def test_default_data_dir_honours_env(tmp_path, monkeypatch):
    (tmp_path / "wic").mkdir()
    monkeypatch.setenv("EDGEZO_DATA", str(tmp_path))
    assert tasks.default_data_dir(get_task("wic")) == (tmp_path / "wic").resolve()


def test_default_data_dir_finds_shared_data_or_none(data_root, monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEZO_DATA", raising=False)
    found = tasks.default_data_dir(get_task("rte"))
    # The repo sits beside shared/ in this workspace; elsewhere nothing may be found.
    assert found is None or (found / "train.tsv").is_file()


def test_no_local_data_and_no_datasets_says_what_to_do(monkeypatch):
    monkeypatch.setattr(tasks, "default_data_dir", lambda task: None)
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # import fails
    with pytest.raises(EdgezoError, match="--data"):
        load_examples(get_task("sst2"), None, "train")
