"""A classification task from a user's own file, trained with FedSPZO: SST-2 rewritten as JSONL
(columns ``review`` and ``sentiment``, labels ``neg``/``pos``) with a template and label words that
are not the built-in's, on SmolLM2-135M in `edgezo simulate`; prints accuracy before and after and
the sizes of the exports (merged model, trainable-only file, PEFT adapter for LoRA).

    python benchmarks/own_data.py                      # norm, 10 rounds, 200 validation examples
    python benchmarks/own_data.py --trainable lora --rounds 1   # LoRA export sizes

Writes under runs/own_data/ (the data, the task file, the job's --out).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = '''name = "movie-reviews"
train = "reviews-train.jsonl"
validation = "reviews-dev.jsonl"
label_column = "sentiment"
template = "Movie review: {review}\\nDid the critic like the movie? Answer:"
mlm_template = "{review} The critic's verdict: {mask}."

[labels]
neg = "No"
pos = "Yes"
'''


def write_task(folder: Path, data: Path) -> Path:
    """SST-2's release TSVs as JSONL rows of another layout, and a task file over them."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        with open(data / "sst2" / f"{split}.tsv", encoding="utf-8") as f, open(folder / f"reviews-{split}.jsonl", "w", encoding="utf-8") as out:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(reader)
            for sentence, label in reader:
                out.write(json.dumps({"review": sentence.strip(), "sentiment": "pos" if label == "1" else "neg"}) + "\n")
    (folder / "task.toml").write_text(TASK, encoding="utf-8")
    return folder / "task.toml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--eval-samples", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--trainable", default="norm")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "own_data"))
    args = ap.parse_args()
    folder = Path(args.out)
    task = write_task(folder / "task", Path(args.data))
    out = folder / f"job-{args.trainable.split(':')[0]}"
    command = [sys.executable, "-m", "edgezo", "simulate", "--task", str(task), "--method", "spzo", "--clients", "4",
               "--rounds", str(args.rounds), "--eval-samples", str(args.eval_samples), "--max-length", str(args.max_length),
               "--trainable", args.trainable, "--out", str(out), "--quiet"]
    print("$ " + " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    summary = json.loads((out / "summary.json").read_text())
    print(f"user task {task} (SST-2 as JSONL, own template and label words), FedSPZO, 4 devices, {args.rounds} rounds, "
          f"trainable {args.trainable}: accuracy {100 * summary['initial_accuracy']:.1f}% -> {100 * summary['final_accuracy']:.1f}% "
          f"on {args.eval_samples} validation examples ({time.perf_counter() - started:.0f} s wall)")
    sizes = {"merged model/": sum(p.stat().st_size for p in (out / "model").iterdir()),
             "trainable.safetensors": (out / "trainable.safetensors").stat().st_size}
    if (out / "adapter").is_dir():
        sizes["adapter/ (PEFT)"] = sum(p.stat().st_size for p in (out / "adapter").iterdir())
    for name, size in sizes.items():
        print(f"  export {name:<24} {size:>13,} bytes")


if __name__ == "__main__":
    main()
