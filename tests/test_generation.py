"""Generation (instruction-tuning) tasks: task files, chat-template rendering, the response-only
causal-LM loss (checked against transformers' own loss), and simulate -> evaluate -> generate on
a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from edgezo.backends.hf.factory import transformers_executor
from edgezo.backends.torch.executor import TorchExecutor
from edgezo.backends.torch.factory import build_torch_executor
from edgezo.backends.torch.lm import IGNORE, encode_pairs
from edgezo.backends.torch.loading import load_model
from edgezo.config import JobConfig
from edgezo.errors import EdgezoError
from edgezo.jobdata import make_batcher
from edgezo.tasks import get_task, load_examples
from test_taskfile import sst2_rows, write_jsonl

GEN = 'kind = "generation"\ntrain = "train.jsonl"\nvalidation = "dev.jsonl"\ntemplate = "Review: {review}\\nSentiment:"\nresponse_column = "answer"\n'
CHAT = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}"


@pytest.fixture(scope="module")
def gen_task(tmp_path_factory, sst2_dir):
    folder = tmp_path_factory.mktemp("gen")
    for split, n in (("train", 120), ("dev", 12)):
        rows = [{"review": r["text"], "answer": "positive" if r["sentiment"] == "pos" else "negative"} for r in sst2_rows(sst2_dir, split, n)]
        write_jsonl(folder / f"{split}.jsonl", rows)
    (folder / "task.toml").write_text(GEN, encoding="utf-8")
    return folder / "task.toml"


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgezo.app.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_generation_task_file_and_its_json_form(gen_task):
    task = get_task(str(gen_task))
    assert task.kind == "generation" and get_task(task.ref) == task
    dev = load_examples(task, None, "dev")
    assert len(dev) == 12 and dev[0].fields["response"] in ("positive", "negative") and "review" in dev[0].fields
    assert task.reference(dev[0]) == dev[0].fields["response"]


def test_messages_and_chat_template_rendering(tmp_path, tiny_llama):
    convo = [{"role": "user", "content": "the film"}, {"role": "assistant", "content": "great"}]
    write_jsonl(tmp_path / "c.jsonl", [{"messages": convo}, {"messages": json.dumps(convo)}])
    (tmp_path / "c.toml").write_text('kind = "generation"\ntrain = "c.jsonl"\nvalidation = "c.jsonl"\nmessages_column = "messages"\n')
    task = get_task(str(tmp_path / "c.toml"))
    examples = load_examples(task, None, "train")
    _, tokenizer, _ = load_model(str(tiny_llama))
    assert task.render(tokenizer, examples[0]) == ("user: the film\nassistant:", " great</s>")  # no chat template: plain turns
    tokenizer.chat_template = CHAT
    prompt, response = task.render(tokenizer, examples[1])
    assert prompt == "<s>user: the film</s><s>assistant:" and response == " great</s>"
    assert task.reference(examples[0]) == "great"


@pytest.mark.parametrize(
    "text,rows,expected",
    [
        (GEN, [{"review": "a", "answer": " "}], r"train\.jsonl:1: column 'answer' is empty: every example needs a response"),
        (GEN, [{"review": "a"}], r"train\.jsonl:1: no column 'answer'"),
        (GEN.replace('response_column = "answer"\n', ""), [], r"task\.toml:1:1: missing key 'response_column'"),
        (GEN + 'prompt_column = "review"\n', [], r"one of them"),
        (GEN.replace("{review}", "{answer}"), [], r"task\.toml:4:12: template shows the response column 'answer'"),
        (GEN + 'labels = 3\n', [], r"task\.toml:6:10: unknown key 'labels' for a generation task"),
        (GEN.replace("generation", "summarise"), [], r"task\.toml:1:8: unknown kind 'summarise'"),
        ('kind = "generation"\ntrain = "train.jsonl"\nvalidation = "train.jsonl"\nmessages_column = "m"\n',
         [{"m": [{"role": "user", "content": "hi"}]}], r"train\.jsonl:1: column 'm': the last message must be the assistant's"),
        ('kind = "generation"\ntrain = "train.jsonl"\nvalidation = "train.jsonl"\nmessages_column = "m"\n',
         [{"m": "not json"}], r"train\.jsonl:1: column 'm' must be a list of"),
    ],
)
def test_bad_generation_tasks_are_one_line(tmp_path, text, rows, expected):
    import re

    (tmp_path / "task.toml").write_text(text)
    write_jsonl(tmp_path / "train.jsonl", rows or [{"review": "a", "answer": "b"}])
    with pytest.raises(EdgezoError) as err:
        load_examples(get_task(str(tmp_path / "task.toml")), None, "train")
    assert re.search(expected, str(err.value)) and "\n" not in str(err.value), str(err.value)


def test_encode_pairs_targets_only_the_response(tiny_llama):
    _, tokenizer, _ = load_model(str(tiny_llama))
    ids, mask, target = encode_pairs(tokenizer, ["Review : good film", "bad"], [" positive </s>", " negative"], max_length=6)
    p0 = tokenizer("Review : good film", add_special_tokens=False)["input_ids"]
    r0 = tokenizer(" positive </s>", add_special_tokens=False)["input_ids"]
    assert ids[0].tolist() == (p0 + r0)[-6:] or ids[0].tolist() == p0[-(6 - len(r0)):] + r0
    row = target[0].tolist()
    assert row[-1] == IGNORE and [t for t in row if t != IGNORE] == r0  # each response token predicted once
    assert mask[1].sum() == 2 and target[1].tolist()[:2] == [tokenizer("negative")["input_ids"][0], IGNORE]


def test_response_loss_equals_transformers_loss_on_masked_labels(gen_task, tiny_llama):
    task = get_task(str(gen_task))
    cfg = JobConfig(model=str(tiny_llama), task=str(gen_task), trainable="lora", split=2).validate()
    ex, _ = build_torch_executor(cfg, task)
    dev = load_examples(task, None, "dev")[:4]
    batch = make_batcher(ex, task, dev)(list(range(4)))
    ours = ex.forward_block2(ex.forward_block1(batch), batch)
    labels = torch.full_like(batch.input_ids, IGNORE)
    labels[:, 1:] = batch.labels[:, :-1]  # transformers shifts labels itself
    with torch.no_grad():
        theirs = ex.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
    assert ours == pytest.approx(float(theirs), rel=1e-5)
    loss, tokens, correct = ex.response_scores(batch)
    assert tokens == int((batch.labels != IGNORE).sum()) and loss / tokens == pytest.approx(ours, rel=1e-5) and 0 <= correct <= tokens
    f1, f2 = ex.forward_flops(batch)
    assert f1 > 0 and f2 > 0
    with pytest.raises(EdgezoError, match="torch backend only"):
        transformers_executor(TorchExecutor, ex.model, ex.tokenizer, JobConfig(model=str(tiny_llama)).validate(), task)


def test_simulate_evaluate_and_generate_a_generation_task(gen_task, tiny_llama, tmp_path):
    out = tmp_path / "run"
    done = run_cli("simulate", "--model", str(tiny_llama), "--task", str(gen_task), "--clients", "2", "--rounds", "2", "--local-steps", "2",
                   "--batch-size", "4", "--lr", "5e-3", "--eps", "1e-2", "--trainable", "full", "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["train_loss"] > 0 and rows[-1]["eval_accuracy"] is not None
    done = run_cli("evaluate", str(out / "model"), "--max-new-tokens", "3", "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "validation loss " in done.stdout and "exact match " in done.stdout and "ROUGE-L " in done.stdout and "on 12 validation examples" in done.stdout
    done = run_cli("generate", str(out / "model"), "Review : a great film", "--max-new-tokens", "3")
    assert done.returncode == 0 and len(done.stdout.split()) >= 1, done.stderr[-2000:]
    done = run_cli("simulate", "--model", str(tiny_llama), "--task", str(gen_task), "--backend", "int8", "--rounds", "1", "--out", str(tmp_path / "x"), "--quiet")
    assert done.returncode == 2 and "torch backend only" in done.stderr


def test_exact_match_and_rouge_l():
    from edgezo.evaluate import exact_match, rouge_l

    assert exact_match(["Paris ", "rome"], ["paris", "Madrid"]) == 0.5
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert 0 < rouge_l(["the cat sat"], ["a cat sat on a mat"]) < 1
    assert rouge_l(["xyz"], ["abc"]) == 0.0


def test_a_masked_lm_refuses_a_generation_task(gen_task, tiny_models):
    with pytest.raises(EdgezoError, match="needs a causal LM"):
        build_torch_executor(JobConfig(model=str(tiny_models["roberta"])).validate(), get_task(str(gen_task)))
