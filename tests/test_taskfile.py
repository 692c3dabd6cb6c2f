"""Tasks from the user's own files (edgezo.taskfile): parsing, the data formats, the one-line
errors naming file, line and column, and the task travelling as JSON to devices."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

from edgezo.errors import EdgezoError
from edgezo.jobdata import device_shards
from edgezo.config import JobConfig
from edgezo.taskfile import placeholders, where
from edgezo.tasks import get_task, load_examples

TASK = '''name = "reviews"
train = "train.jsonl"
validation = "dev.jsonl"
label_column = "sentiment"
template = "Movie review: {text}\\nSentiment:"

[labels]
neg = "negative"
pos = "positive"
'''


def sst2_rows(sst2_dir: Path, split: str, n: int) -> list[dict]:
    rows = []
    with open(sst2_dir / f"{split}.tsv", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for sentence, label in reader:
            rows.append({"text": sentence.strip(), "sentiment": "pos" if label == "1" else "neg", "id": len(rows)})
            if len(rows) == n:
                break
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def task_dir(tmp_path, sst2_dir) -> Path:
    write_jsonl(tmp_path / "train.jsonl", sst2_rows(sst2_dir, "train", 60))
    write_jsonl(tmp_path / "dev.jsonl", sst2_rows(sst2_dir, "dev", 20))
    (tmp_path / "task.toml").write_text(TASK, encoding="utf-8")
    return tmp_path


def test_task_file_reads_jsonl_with_its_template_and_label_words(task_dir, sst2_dir):
    task = get_task(str(task_dir / "task.toml"))
    assert task.name == "reviews" and task.label_names == ("neg", "pos")
    assert task.verbalizers("causal") == (" negative", " positive")  # a leading space is added
    assert task.mlm_template == "Movie review: {text}\nSentiment: {mask}"
    train = load_examples(task, None, "train")
    builtin = load_examples(get_task("sst2"), sst2_dir, "train")[:60]
    assert [e.fields["text"] for e in train] == [e.fields["sentence"] for e in builtin]
    assert [e.label for e in train] == [e.label for e in builtin]  # neg -> 0, pos -> 1 as SST-2's 0/1
    assert task.prompt(train[0], "causal") == "Movie review: hide new secretions from the parental units\nSentiment:"
    assert len(load_examples(task, None, "dev")) == 20


def test_csv_tsv_and_three_labels_with_multi_word_label_words(tmp_path):
    rows = [("the invoice is wrong", "billing"), ("app crashes on start", "bug"), ("how do I export", "question"),
            ("charged twice", "billing")]
    with open(tmp_path / "t.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ticket", "kind"])
        w.writerows(rows)
    with open(tmp_path / "v.tsv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["kind", "ticket"])
        w.writerows([(k, t) for t, k in rows[:2]])
    (tmp_path / "tickets.toml").write_text(
        'train = "t.csv"\nvalidation = "v.tsv"\nlabel_column = "kind"\ntemplate = "Ticket: {ticket}\\nKind:"\n'
        'mlm_template = "{ticket} This is about {mask}."\n'
        '[labels]\nbilling = " billing issue"\nbug = "software bug"\nquestion = "question"\n')
    task = get_task(str(tmp_path / "tickets.toml"))
    assert task.name == "tickets" and len(task.label_names) == 3
    assert task.verbalizers("mlm") == (" billing issue", " software bug", " question")
    assert [e.label for e in load_examples(task, None, "train")] == [0, 1, 2, 0]
    dev = load_examples(task, None, "dev")
    assert [e.label for e in dev] == [0, 1] and task.prompt(dev[1], "mlm", "<mask>") == "app crashes on start This is about <mask>."
    assert device_shards(JobConfig(clients=2, partition="dirichlet"), load_examples(task, None, "train"))


def test_json_booleans_and_numbers_as_labels(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"q": "is it", "y": True}, {"q": "no", "y": False}])
    write_jsonl(tmp_path / "b.jsonl", [{"q": "x", "y": 1}, {"q": "y", "y": 0.0}])
    (tmp_path / "t.toml").write_text('train = "a.jsonl"\nvalidation = "a.jsonl"\nlabel_column = "y"\ntemplate = "{q}?"\n[labels]\nfalse = "No"\ntrue = "Yes"\n')
    (tmp_path / "n.toml").write_text('train = "b.jsonl"\nvalidation = "b.jsonl"\nlabel_column = "y"\ntemplate = "{q}?"\n[labels]\n0 = "No"\n1 = "Yes"\n')
    assert [e.label for e in load_examples(get_task(str(tmp_path / "t.toml")), None, "train")] == [1, 0]
    assert [e.label for e in load_examples(get_task(str(tmp_path / "n.toml")), None, "train")] == [1, 0]


def test_data_may_be_this_devices_own_file_or_a_folder(task_dir, tmp_path_factory, sst2_dir):
    task = get_task(str(task_dir / "task.toml"))
    own = write_jsonl(tmp_path_factory.mktemp("device") / "mine.jsonl", sst2_rows(sst2_dir, "train", 7))
    assert len(load_examples(task, own, "train")) == 7
    assert len(load_examples(task, own, "dev")) == 20  # the validation file stays the task's
    folder = tmp_path_factory.mktemp("elsewhere")
    write_jsonl(folder / "train.jsonl", sst2_rows(sst2_dir, "train", 3))
    assert len(load_examples(task, folder, "train")) == 3
    with pytest.raises(EdgezoError, match="does not exist"):
        load_examples(task, folder / "nope.jsonl", "train")


def test_the_task_travels_as_json_and_means_the_same_task(task_dir, tmp_path, sst2_dir):
    task = get_task(str(task_dir / "task.toml"))
    again = get_task(task.ref)
    assert again == task
    assert get_task("sst2").ref == "sst2"
    # A device elsewhere: the JSON task and its own file (the coordinator's paths need not exist).
    own = write_jsonl(tmp_path / "own.jsonl", sst2_rows(sst2_dir, "dev", 5))
    moved = get_task(task.ref.replace(str(task_dir), "/nowhere"))
    assert len(load_examples(moved, own, "train")) == 5


def test_placeholders():
    assert placeholders("a {x} b {y} {x}") == ["x", "y", "x"]
    assert placeholders("literal {{braces}} {x}") == ["x"]
    for bad in ("{}", "{0}", "{x.y}", "{x[0]}", "{x!r}", "{x:>5}", "{x", "x}"):
        with pytest.raises(ValueError):
            placeholders(bad)


def test_where_finds_keys_in_sections():
    text = 'template = "a"\n\n[labels]\n  neg = ""\n"pos two" = "x"\n'
    assert where(text, "template") == (1, 12)
    assert where(text, "neg", "labels") == (4, 9)
    assert where(text, "pos two", "labels") == (5, 13)
    assert where(text, "neg") == (1, 1)


def _error(path: Path) -> str:
    with pytest.raises(EdgezoError) as err:
        task = get_task(str(path))
        load_examples(task, None, "train")
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda t: t.replace('template = "Movie review: {text}\\nSentiment:"', 'template = "Review: {txet}\\nSentiment:"'),
         r"train\.jsonl:1: no column 'txet' \(the task's template uses it"),
        (lambda t: t.replace("{text}", "{0}"), r"task\.toml:5:12: template: positional placeholder \{0\}"),
        (lambda t: t.replace("{text}", "{text!r}"), r"task\.toml:5:12: template: placeholder \{text!r\} must be a plain column name"),
        (lambda t: t.replace("{text}", "{text"), r"task\.toml:5:12: template: .*brace"),
        (lambda t: t.replace('pos = "positive"', 'pos = "  "'), r"task\.toml:9:7: \[labels\] label 'pos' has empty label words"),
        (lambda t: t.replace('pos = "positive"', 'pos = "negative"'), r"task\.toml:9:7: \[labels\] gives labels 'neg' and 'pos' the same label words 'negative'"),
        (lambda t: t.replace('pos = "positive"\n', ""), r"task\.toml:7:1: \[labels\] must map at least two label values"),
        (lambda t: t.replace('neg = "negative"', 'negative = "negative"'),
         r"train\.jsonl:1: column 'sentiment': label 'neg' is not one of the task's labels \(negative, pos\)"),
        (lambda t: t.replace('label_column = "sentiment"', 'label_column = "stars"'), r"train\.jsonl:1: no column 'stars' \(the task's label column"),
        (lambda t: t.replace('name = "reviews"', 'name = "reviews"\nvalidaton = "x"'), r"task\.toml:2:13: unknown key 'validaton'"),
        (lambda t: t.replace('train = "train.jsonl"\n', ""), r"task\.toml:1:1: missing key 'train'"),
        (lambda t: t.replace("Sentiment:", "Sentiment: {mask}"), r"task\.toml:5:12: template \(for causal LMs\) must not contain \{mask\}"),
        (lambda t: t.replace("[labels]", 'mlm_template = "{text} no mask"\n[labels]'), r"task\.toml:7:16: mlm_template must contain \{mask\} exactly once"),
        (lambda t: t.replace("[labels]", "[labels"), r"task\.toml:7:8: not valid TOML"),
        (lambda t: t.replace("{text}", "{sentiment}"), r"template shows the label column 'sentiment'"),
        (lambda t: t.replace("train.jsonl", "train.xlsx"), r"train\.xlsx: cannot tell the format"),
        (lambda t: t.replace("train.jsonl", "missing.jsonl"), r"missing data file .*missing\.jsonl"),
    ],
)
def test_bad_task_files_are_one_line_naming_file_line_and_column(task_dir, edit, expected):
    (task_dir / "task.toml").write_text(edit(TASK), encoding="utf-8")
    message = _error(task_dir / "task.toml")
    assert re.search(expected, message), message


def test_bad_data_rows_name_file_and_line(task_dir):
    lines = (task_dir / "train.jsonl").read_text().splitlines()
    lines[2] = '{"text": "x", "sentiment": "meh"}'
    (task_dir / "train.jsonl").write_text("\n".join(lines) + "\n")
    assert "train.jsonl:3: column 'sentiment': label 'meh' is not one of" in _error(task_dir / "task.toml")
    lines[2] = '{"text": "x", oops}'
    (task_dir / "train.jsonl").write_text("\n".join(lines) + "\n")
    assert "train.jsonl:3:15: invalid JSON" in _error(task_dir / "task.toml")
    (task_dir / "train.jsonl").write_text("")
    assert "no examples in the file" in _error(task_dir / "task.toml")


def test_bad_csv_row_names_the_line(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\ngood,1\nno label here\n")
    (tmp_path / "t.toml").write_text('train = "d.csv"\nvalidation = "d.csv"\ntemplate = "{text}"\n[labels]\n0 = "bad"\n1 = "good"\n')
    assert "d.csv:3:1: expected 2 fields" in _error(tmp_path / "t.toml")


def test_parquet_needs_pyarrow_and_says_so(tmp_path, monkeypatch):
    (tmp_path / "t.toml").write_text('train = "d.parquet"\nvalidation = "d.parquet"\ntemplate = "{text}"\n[labels]\n0 = "bad"\n1 = "good"\n')
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        (tmp_path / "d.parquet").write_bytes(b"PAR1")
        assert "reading Parquet needs pyarrow: pip install pyarrow" in _error(tmp_path / "t.toml")
        return
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1, 0]}), tmp_path / "d.parquet")
    assert [e.label for e in load_examples(get_task(str(tmp_path / "t.toml")), None, "train")] == [1, 0]
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert "reading Parquet needs pyarrow" in _error(tmp_path / "t.toml")


def test_unknown_task_name_mentions_task_files():
    with pytest.raises(EdgezoError, match="TOML task file"):
        get_task("mnli")
    with pytest.raises(EdgezoError, match="task file nope.toml does not exist"):
        get_task("nope.toml")


def test_masked_lm_variant_of_a_user_task_runs_on_a_tiny_roberta(task_dir, tiny_models):
    from edgezo.backends.torch.factory import build_torch_executor
    from edgezo.jobdata import make_batcher, prompts_for

    (task_dir / "task.toml").write_text(TASK.replace("[labels]", 'mlm_template = "{text} It was {mask} ."\n\n[labels]'))
    task = get_task(str(task_dir / "task.toml"))
    ex, _ = build_torch_executor(JobConfig(model=str(tiny_models["roberta"]), task=str(task_dir / "task.toml")).validate(), task)
    dev = load_examples(task, None, "dev")
    assert ex.kind == "mlm" and all(p.endswith(f"It was {ex.tokenizer.mask_token} .") for p in prompts_for(ex, task, dev))
    batch = make_batcher(ex, task, dev)(list(range(8)))
    assert len(ex.predict(batch)) == 8 and ex.forward_block2(ex.forward_block1(batch), batch) > 0


# -- the same task from options (--train, --template, --labels, ...) instead of a file ------------

JOB = dict(clients=2, rounds=1, local_steps=1, batch_size=4, max_length=32, eval_samples=8, seed=3, lr=2e-3, trainable="norm")


def _simulate(tiny_llama, out: Path, **options) -> dict:
    from edgezo.app.jobs.simulate import SimulateJob

    return SimulateJob.from_options(model=str(tiny_llama), out=str(out), device="cpu", **JOB, **options).run().summary


def _options(task_dir: Path) -> dict:
    return dict(train=str(task_dir / "train.jsonl"), validation=str(task_dir / "dev.jsonl"), label_column="sentiment",
                template="Movie review: {text}\nSentiment:", labels="neg=negative,pos=positive")


def test_a_task_from_options_trains_to_the_task_files_fingerprint(task_dir, tiny_llama, tmp_path):
    from_file = _simulate(tiny_llama, tmp_path / "file", task=str(task_dir / "task.toml"))
    from_options = _simulate(tiny_llama, tmp_path / "options", **_options(task_dir))
    assert from_options["fingerprint"] == from_file["fingerprint"]
    assert from_options["final_accuracy"] == from_file["final_accuracy"]
    recorded = json.loads(from_options["settings"]["task"])  # the job records the task whole, as an announcement carries it
    assert recorded["labels"] == {"neg": " negative", "pos": " positive"} and recorded["train"] == str(task_dir / "train.jsonl")


def test_task_options_from_a_config_file_and_the_same_task_as_the_file(task_dir, tmp_path, monkeypatch):
    from edgezo.app.jobs.simulate import SimulateJob

    monkeypatch.chdir(task_dir)  # paths in options are relative to the working folder
    (tmp_path / "job.toml").write_text('train = "train.jsonl"\nvalidation = "dev.jsonl"\nlabel_column = "sentiment"\n'
                                       'template = "Movie review: {text}\\nSentiment:"\nlabels = "neg=negative,pos=positive"\n')
    job = SimulateJob.from_options(str(tmp_path / "job.toml"))
    task = get_task(job.config.task)
    assert task.source == get_task(str(task_dir / "task.toml")).source and task.causal_verbalizers == (" negative", " positive")
    assert task.name == "train"  # the training file's stem, as a task file's default name is its own stem
    plain = SimulateJob.from_options(**{**_options(task_dir), "labels": "neg,pos", "label_column": None})
    assert get_task(plain.config.task).causal_verbalizers == (" neg", " pos")  # each value its own label word


@pytest.mark.parametrize(
    "change,expected",
    [
        (dict(template="Review: {0}"), r"^--template: template: positional placeholder \{0\}"),
        (dict(template="Review: {sentiment}"), r"^--template: template shows the label column 'sentiment'"),
        (dict(template="no column"), r"^--template: template uses no column"),
        (dict(template=None), r"needs --template"),
        (dict(labels="neg=negative,pos="), r"^--labels: \[labels\] label 'pos' has empty label words"),
        (dict(labels="neg=negative,pos=negative"), r"^--labels: \[labels\] gives labels 'neg' and 'pos' the same label words"),
        (dict(labels="neg=x,neg=y"), r"names label 'neg' twice"),
        (dict(labels="neg"), r"^--labels: \[labels\] must map at least two label values"),
        (dict(labels=None, label_column=None), r"needs --labels VALUE=WORDS"),
        (dict(validation=None), r"needs --validation FILE"),
        (dict(response_column="answer"), r"--labels, --label-column \(a classification task\) and --response-column"),
        (dict(task="sst2"), r"--task 'sst2' and --train/--template/\.\.\. both name the job's task"),
    ],
)
def test_bad_task_options_are_one_line_errors(task_dir, change, expected):
    from edgezo.app.jobs.simulate import SimulateJob

    options = {k: v for k, v in {**_options(task_dir), **change}.items() if v is not None}
    with pytest.raises(EdgezoError) as err:
        SimulateJob.from_options(**options)
    assert "\n" not in str(err.value) and re.search(expected, str(err.value)), str(err.value)


def test_a_generation_task_from_options_is_the_task_files(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"q": "name a colour", "a": "red"}, {"q": "two plus two", "a": "four"}])
    (tmp_path / "gen.toml").write_text('kind = "generation"\ntrain = "t.jsonl"\nvalidation = "t.jsonl"\ntemplate = "Q: {q}"\nresponse_column = "a"\n')
    from edgezo.taskfile import TaskOptions, task_from_options

    task = task_from_options(TaskOptions(train=str(tmp_path / "t.jsonl"), validation=str(tmp_path / "t.jsonl"), template="Q: {q}", response_column="a"))
    assert task.kind == "generation" and task.source == get_task(str(tmp_path / "gen.toml")).source
    with pytest.raises(EdgezoError, match=r"^task options: give the prompt as prompt_column"):
        task_from_options(TaskOptions(train="t.jsonl", validation="t.jsonl", response_column="a"))


def test_task_options_on_the_command_line(task_dir):
    done = __import__("subprocess").run(
        [sys.executable, "-m", "edgezo", "simulate", "--train", str(task_dir / "train.jsonl"), "--validation", str(task_dir / "dev.jsonl"),
         "--template", "Review: {txt}", "--labels", "neg,pos", "--label-column", "sentiment", "--out", str(task_dir / "out")],
        capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "train.jsonl:1: no column 'txt' (the task's template uses it" in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1, done.stderr


def test_coordinate_takes_the_task_options_and_announces_the_file_task(task_dir, tmp_path):
    from edgezo.app.jobs.coordinate import CoordinateJob

    job = CoordinateJob.from_options(out=str(tmp_path / "out"), **_options(task_dir))
    task = get_task(job.config.task)  # the JSON text every device receives in the announcement
    assert task.source == get_task(str(task_dir / "task.toml")).source and task.causal_verbalizers == (" negative", " positive")
    with pytest.raises(EdgezoError, match=r"needs --validation FILE"):
        CoordinateJob.from_options(**{k: v for k, v in _options(task_dir).items() if k != "validation"})
