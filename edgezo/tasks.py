"""Prompt-based task alignment (MeZO, Malladi et al. 2023) for SST-2, RTE, BoolQ and WiC.

Fine-tuning is posed as the model's own pre-training objective: each example becomes a prompt,
and the loss is cross-entropy over the label words ("verbalizers") only -- at the mask position
for masked LMs, at the next token for causal LMs. Zero-order methods need this: with a random
classification head the loss landscape is too flat for a handful of forward passes to move.

Data comes from the original GLUE/SuperGLUE files (TSV/JSONL, see ../shared/data/README.md),
or, when no folder is given or found, lazily from the Hugging Face hub if `datasets` is installed.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from edgezo.errors import EdgezoError

KINDS = ("causal", "mlm")
# "dev" is the canonical name; the releases call it dev (GLUE) or val (SuperGLUE).
_SPLIT_ALIASES = {"train": "train", "dev": "dev", "val": "dev", "validation": "dev"}


@dataclass(frozen=True)
class Example:
    """One labelled example: raw text fields (names used by the task's templates) and a label index."""

    fields: dict[str, str]
    label: int  # index into the task's verbalizers


@dataclass(frozen=True)
class Task:
    """A task's prompts and label words for both model kinds.

    Templates are `str.format` templates over the example's fields; the fields themselves are
    never formatted, so raw text containing `{` or `}` is safe.
    """

    name: str
    label_names: tuple[str, ...]
    causal_template: str
    causal_verbalizers: tuple[str, ...]
    mlm_template: str  # contains "{mask}"
    mlm_verbalizers: tuple[str, ...]
    source: Any = None  # a user task's files (edgezo.taskfile.TableSource); None: a built-in's release files
    kind: str = "classification"  # label words; edgezo.taskfile.GenerationTask is the other kind

    @property
    def ref(self) -> str:
        """How a job names the task (``JobConfig.task``, the announcement): a built-in's name, or
        a user task as JSON text (its template and label words travel; devices read their own data)."""
        if self.source is None:
            return self.name
        from edgezo.taskfile import task_ref

        return task_ref(self)

    def prompt(self, example: Example, kind: str, mask_token: str | None = None) -> str:
        """The text fed to the model; for "mlm" the tokenizer's mask token fills `{mask}`."""
        if kind == "causal":
            return self.causal_template.format(**example.fields)
        if kind == "mlm":
            if mask_token is None:
                raise EdgezoError(
                    f"task {self.name}: an mlm prompt needs the tokenizer's mask token "
                    "(pass mask_token=tokenizer.mask_token)"
                )
            return self.mlm_template.format(**example.fields, mask=mask_token)
        raise EdgezoError(f"unknown model kind {kind!r}: use one of {', '.join(KINDS)}")

    def verbalizers(self, kind: str) -> tuple[str, ...]:
        """Label words in label order; each starts with a space so it is one word-initial token."""
        if kind == "causal":
            return self.causal_verbalizers
        if kind == "mlm":
            return self.mlm_verbalizers
        raise EdgezoError(f"unknown model kind {kind!r}: use one of {', '.join(KINDS)}")


# Causal SST-2 prompt measured at 78% zero-shot on SmolLM2-135M (weaker wordings score ~50%).
# MLM prompts follow MeZO/LM-BFF's RoBERTa templates.
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="sst2",
            label_names=("negative", "positive"),
            causal_template="Review: {sentence}\nSentiment:",
            causal_verbalizers=(" negative", " positive"),
            mlm_template="{sentence} It was {mask}.",
            mlm_verbalizers=(" terrible", " great"),
        ),
        Task(
            name="rte",
            label_names=("entailment", "not_entailment"),
            causal_template="{premise}\nQuestion: {hypothesis} True or False?\nAnswer:",
            causal_verbalizers=(" True", " False"),
            mlm_template="{premise} ? {mask} , {hypothesis}",
            mlm_verbalizers=(" Yes", " No"),
        ),
        Task(
            name="boolq",
            label_names=("false", "true"),
            causal_template="{passage}\nQuestion: {question}?\nAnswer:",
            causal_verbalizers=(" No", " Yes"),
            mlm_template="{passage} Question: {question}? Answer: {mask}.",
            mlm_verbalizers=(" No", " Yes"),
        ),
        Task(
            name="wic",
            label_names=("different", "same"),
            causal_template=(
                'Does the word "{word}" have the same meaning in these two sentences?\n'
                "{sentence1}\n{sentence2}\nAnswer:"
            ),
            causal_verbalizers=(" No", " Yes"),
            mlm_template=(
                '{sentence1} {sentence2} Does the word "{word}" have the same meaning '
                "in both sentences? {mask}."
            ),
            mlm_verbalizers=(" No", " Yes"),
        ),
    )
}


def get_task(name: str) -> Task:
    """A built-in task by name (case-insensitive), a TOML task file by path (``edgezo.taskfile``),
    or a task a job announcement carries as JSON text (``Task.ref``)."""
    if name.lower() in TASKS:
        return TASKS[name.lower()]
    if name.lstrip().startswith("{"):
        from edgezo.taskfile import task_from_ref

        return task_from_ref(name)
    if name.endswith(".toml") or Path(name).expanduser().is_file():
        from edgezo.taskfile import load_task_file

        return load_task_file(name)
    raise EdgezoError(f"unknown task {name!r}: use one of {', '.join(TASKS)}, or a TOML task file (see docs/data.md)")


def default_data_dir(task: Task) -> Path | None:
    """Find the task's data folder: $EDGEZO_DATA/<task>, then ../shared/data/<task> next to the
    working directory and next to the repository. None if none exists (callers may go online)."""
    candidates = []
    if os.environ.get("EDGEZO_DATA"):
        candidates.append(Path(os.environ["EDGEZO_DATA"]) / task.name)
    repo = Path(__file__).resolve().parents[1]
    candidates += [Path.cwd() / ".." / "shared" / "data" / task.name, repo / ".." / "shared" / "data" / task.name]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def load_examples(task: Task, data_dir: str | Path | None, split: str) -> list[Example]:
    """Read a split ("train" or "dev") from the original release files.

    `data_dir` may be the task folder or its parent. With `data_dir=None` the default folder is
    used, and failing that the Hugging Face hub (only if `datasets` is installed).
    """
    if split not in _SPLIT_ALIASES:
        raise EdgezoError(f"unknown split {split!r} for {task.name}: use 'train' or 'dev'")
    split = _SPLIT_ALIASES[split]
    if task.source is not None:
        from edgezo.taskfile import read_examples

        return read_examples(task, data_dir, split)
    if data_dir is None:
        data_dir = default_data_dir(task)
        if data_dir is None:
            return _load_from_hub(task, split)
    folder = _task_folder(task, Path(data_dir))
    return _READERS[task.name](folder, split)


def _task_folder(task: Task, data_dir: Path) -> Path:
    if (data_dir / task.name).is_dir():
        return data_dir / task.name
    if data_dir.is_dir():
        return data_dir
    raise EdgezoError(
        f"data folder {data_dir} does not exist: point --data at the {task.name} folder "
        f"(or its parent), or set $EDGEZO_DATA"
    )


def _need(path: Path) -> Path:
    if not path.is_file():
        raise EdgezoError(
            f"missing data file {path}: copy the original release file there "
            "(see ../shared/data/README.md) or point --data elsewhere"
        )
    return path


def _bad(path: Path, line: int, what: str) -> EdgezoError:
    return EdgezoError(f"{path}:{line}: {what}; fix or replace the file with the original release")


def _read_tsv(path: Path, header: list[str]) -> list[tuple[int, list[str]]]:
    """Rows with their 1-based line numbers. QUOTE_NONE: the GLUE TSVs are unquoted and
    contain literal double quotes."""
    with _need(path).open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        first = next(reader, None)
        if first != header:
            want = "\t".join(header)
            raise _bad(path, 1, f"expected header {want!r}, got {first!r}")
        rows = []
        for row in reader:
            if len(row) != len(header):
                raise _bad(path, reader.line_num, f"expected {len(header)} tab-separated fields, got {len(row)}")
            rows.append((reader.line_num, row))
        return rows


def json_objects(path: Path, error: Callable[[int, int, str], Exception]) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; ``error(line, column, what)``
    builds the exception for a line that is not one JSON object (each caller words its own fix)."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(n, e.colno, f"invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise error(n, 1, "expected a JSON object (one example per line)")
            yield n, obj


def _read_jsonl(path: Path, keys: tuple[str, ...]) -> list[tuple[int, dict]]:
    rows = []
    for n, obj in json_objects(_need(path), lambda n, _col, what: _bad(path, n, what)):
        if any(k not in obj for k in keys):
            raise _bad(path, n, f"expected a JSON object with keys {', '.join(keys)}")
        if not isinstance(obj["label"], bool):
            raise _bad(path, n, f"label must be true or false, got {obj['label']!r}")
        rows.append((n, obj))
    return rows


def _read_sst2(folder: Path, split: str) -> list[Example]:
    path = folder / f"{split}.tsv"
    out = []
    for n, (sentence, label) in _read_tsv(path, ["sentence", "label"]):
        if label not in ("0", "1"):
            raise _bad(path, n, f"label must be 0 or 1, got {label!r}")
        # GLUE sentences end with a space before the tab; it would leak into the prompt.
        out.append(Example({"sentence": sentence.strip()}, int(label)))
    return out


def _read_rte(folder: Path, split: str) -> list[Example]:
    path = folder / f"{split}.tsv"
    names = TASKS["rte"].label_names
    out = []
    for n, (_, premise, hypothesis, label) in _read_tsv(path, ["index", "sentence1", "sentence2", "label"]):
        if label not in names:
            raise _bad(path, n, f"label must be one of {', '.join(names)}, got {label!r}")
        out.append(Example({"premise": premise, "hypothesis": hypothesis}, names.index(label)))
    return out


_WARNED: set[str] = set()


def _read_boolq(folder: Path, split: str) -> list[Example]:
    def examples(path: Path, keep=lambda n, obj: True) -> list[Example]:
        return [
            Example({"passage": o["passage"], "question": o["question"]}, int(o["label"]))
            for n, o in _read_jsonl(path, ("question", "passage", "label"))
            if keep(n, o)
        ]

    if (folder / "train.jsonl").is_file():
        return examples(folder / f"{'train' if split == 'train' else 'val'}.jsonl")
    # Only the validation split is available here (see the data README): carve a dev set out
    # of it deterministically so train and dev never overlap.
    if "boolq-split" not in _WARNED:
        _WARNED.add("boolq-split")
        warnings.warn(
            f"BoolQ: no train.jsonl in {folder}; splitting val.jsonl instead "
            "(idx % 5 == 0 -> dev, the rest -> train)",
            stacklevel=3,
        )

    def keep(n: int, o: dict) -> bool:
        in_dev = int(o.get("idx", n - 1)) % 5 == 0
        return in_dev == (split == "dev")

    return examples(folder / "val.jsonl", keep)


def _read_wic(folder: Path, split: str) -> list[Example]:
    path = folder / f"{'train' if split == 'train' else 'val'}.jsonl"
    keys = ("word", "sentence1", "sentence2", "label")
    return [
        Example({k: o[k] for k in keys[:3]}, int(o["label"]))
        for _, o in _read_jsonl(path, keys)
    ]


_READERS = {"sst2": _read_sst2, "rte": _read_rte, "boolq": _read_boolq, "wic": _read_wic}

# Hub names and field mapping; hub labels already use our label order.
_HUB = {
    "sst2": ("nyu-mll/glue", "sst2", {"sentence": "sentence"}),
    "rte": ("nyu-mll/glue", "rte", {"premise": "sentence1", "hypothesis": "sentence2"}),
    "boolq": ("aps/super_glue", "boolq", {"passage": "passage", "question": "question"}),
    "wic": ("aps/super_glue", "wic", {"word": "word", "sentence1": "sentence1", "sentence2": "sentence2"}),
}


def _load_from_hub(task: Task, split: str) -> list[Example]:
    """Last resort when no local folder exists: needs `datasets` and network access."""
    try:
        import datasets  # noqa: PLC0415 -- optional, heavy, and usually absent
    except ImportError:
        raise EdgezoError(
            f"no local data for {task.name}: pass --data, set $EDGEZO_DATA, "
            "or install `datasets` to download it"
        ) from None
    repo, config, mapping = _HUB[task.name]
    try:
        rows = datasets.load_dataset(repo, config, split="train" if split == "train" else "validation")
    except Exception as e:  # network, hub or cache errors: all mean "could not get the data"
        raise EdgezoError(f"could not download {task.name} from the hub ({e}): pass --data instead") from None
    return [Example({ours: str(r[theirs]) for ours, theirs in mapping.items()}, int(r["label"])) for r in rows]
