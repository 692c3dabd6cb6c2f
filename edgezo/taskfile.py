"""Tasks from the user's own files: a small TOML file names the data files, the columns, the
prompt template and the label words; edgezo turns it into the same :class:`edgezo.tasks.Task` the
built-in tasks are, so training, evaluation and federation treat both alike.

A classification task file (paths are relative to the task file)::

    name = "tickets"                       # optional (default: the file's stem)
    train = "tickets-train.jsonl"          # JSONL, CSV, TSV or Parquet (by suffix, or `format`)
    validation = "tickets-dev.jsonl"
    label_column = "label"                 # optional (default "label")
    template = "Ticket: {text}\\nCategory:"   # causal LMs: the label word follows the prompt
    mlm_template = "{text} Category: {mask}."  # masked LMs (optional: template + " {mask}")

    [labels]                               # value in the label column = label word, in label order
    billing = "billing"
    bug = "bug report"

Label words get a leading space when they have none (they follow the prompt as a new word);
each is scored by its first token, so two labels' words must start with different tokens.

The same task can be given as options instead (``edgezo simulate --train FILE --validation FILE
--template "..." --labels 0=terrible,1=great``, or those keys in ``--config``): :class:`TaskOptions`
holds the file's keys and goes through the same checks. Either way the job records the parsed
task (``Task.ref``, a JSON text): the same task must mean the same prompt and label words on
every device of a federation, so the coordinator sends it in its announcement, while each
device reads its *own* data file (``--data FILE``).

Every problem the user can fix is one :class:`EdgezoError` line naming the file, line and column:
TOML syntax, a missing or empty key, a template placeholder that is not a column, empty label
words, a label value in the data that is not one of the labels.
"""

from __future__ import annotations

import csv
import json
import re
import string
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from edgezo.errors import EdgezoError

FORMATS = ("jsonl", "csv", "tsv", "parquet")
_SUFFIX_FORMAT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
KNOWN_KEYS = ("name", "kind", "train", "validation", "format", "label_column", "template", "mlm_template", "labels", "mlm_labels")
GENERATION_KEYS = ("name", "kind", "train", "validation", "format", "template", "prompt_column", "response_column", "messages_column", "chat_template")
KINDS = ("classification", "generation")
MASK = "mask"


@dataclass(frozen=True)
class TableSource:
    """Where a user task's examples are and how to read them (paths absolute)."""

    train: str
    validation: str
    format: str | None  # None: from each file's suffix
    label_column: str
    label_values: tuple[str, ...]  # the label column's values, in label order
    columns: tuple[str, ...]  # the text columns the templates use


# -- the task file --------------------------------------------------------------------------------


def where(text: str, key: str, section: str | None = None) -> tuple[int, int]:
    """(line, column), 1-based, of the value of ``key`` (in ``[section]`` if given) in TOML text;
    (1, 1) when it cannot be found (an inline table, a key spelled with escapes)."""
    current = None
    pattern = re.compile(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=\s*""")
    for n, line in enumerate(text.splitlines(), 1):
        header = re.match(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if header:
            current = header.group(1).strip()
            if section is None and current == key:
                return n, 1
            continue
        if current == section and (m := pattern.match(line)):
            return n, m.end() + 1
    return 1, 1


class _Located:
    """Builds one-line errors ``FILE:LINE:COLUMN: what`` for a task file."""

    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text

    def error(self, what: str, key: str | None = None, section: str | None = None) -> EdgezoError:
        line, col = where(self.text, key, section) if key else (1, 1)
        return EdgezoError(f"{self.path}:{line}:{col}: {what}")


def placeholders(template: str) -> list[str]:
    """The field names a template formats, in order; ValueError for what ``str.format`` would
    misread in user text: unbalanced braces, positional ``{}``/``{0}``, ``{a.b}``, ``{a[0]}``,
    conversions and format specs (a column name is all a placeholder may be)."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{e} (write a literal brace as {{{{ or }}}})") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            raise ValueError(f"positional placeholder {{{field}}}: name a column, e.g. {{text}}")
        if not re.fullmatch(r"[^.\[\]!:{}]+", field) or spec or conversion:
            raise ValueError(f"placeholder {{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} must be a plain column name")
        names.append(field)
    return names


def load_task_file(path: str | Path):
    """Parse and check a task file; returns a :class:`edgezo.tasks.Task` (data not read yet)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EdgezoError(f"task file {path} does not exist: pass a built-in task name or a TOML task file")
    text = path.read_text(encoding="utf-8")
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        at = f"{m.group(1)}:{m.group(2)}" if m else "1:1"
        raise EdgezoError(f"{path}:{at}: not valid TOML ({str(e).split(' (at line')[0]})") from None
    return task_from_spec(spec, path.resolve().parent, _Located(path, text), path.stem)


def task_from_ref(ref: str):
    """The task a job announcement names by its JSON text (``Task.ref``)."""
    try:
        spec = json.loads(ref)
    except ValueError:
        raise EdgezoError("the job's task description is not valid JSON: coordinator and device run different edgezo versions?") from None
    return task_from_spec(spec, Path("."), _Located(Path("<announced task>"), ""), spec.get("name", "task"))


@dataclass
class TaskOptions:
    """A user task from options (``--train``, ``--template``, ...) or ``--config`` keys instead of
    a task file: the file's keys under the same names, so :func:`task_from_options` builds the same
    task through the same checks (``labels`` is text here: ``VALUE=WORDS,...`` or ``VALUE,...``).
    The kind follows from what is given: ``labels`` (classification) or ``prompt_column``,
    ``response_column``, ``messages_column`` (generation). Paths are relative to the working folder."""

    train: str | None = None
    validation: str | None = None
    template: str | None = None
    labels: str | None = None
    label_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    messages_column: str | None = None

    def given(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


_GENERATION_OPTIONS = ("prompt_column", "response_column", "messages_column")
_CLASSIFICATION_OPTIONS = ("labels", "label_column")


class _FromOptions:
    """Builds the one-line errors of a task given as options: ``--option: what`` (the checks and
    their words are the task file's)."""

    def error(self, what: str, key: str | None = None, section: str | None = None) -> EdgezoError:
        option = section or key
        known = {f.name for f in fields(TaskOptions)}
        return EdgezoError(f"--{option.replace('_', '-')}: {what}" if option in known else f"task options: {what}")


def parse_label_option(text: str) -> dict[str, str]:
    """``--labels``: ``0=terrible,1=great`` (label value = label words, in label order), or
    ``negative,positive`` (each value its own label word)."""
    table: dict[str, str] = {}
    for item in text.split(","):
        value, sep, words = item.partition("=")
        value = value.strip()
        if not value:
            raise EdgezoError(f"--labels {text!r}: an empty label value; write VALUE=WORDS,... or VALUE,...")
        if value in table:
            raise EdgezoError(f"--labels {text!r} names label {value!r} twice")
        table[value] = words if sep else value
    return table


def task_from_options(options: TaskOptions, base: Path | None = None):
    """The task of ``options`` (None when none is given), checked as a task file would be."""
    given = options.given()
    if not given:
        return None
    generation = [k for k in _GENERATION_OPTIONS if k in given]
    classification = [k for k in _CLASSIFICATION_OPTIONS if k in given]
    flag = lambda keys: ", ".join(f"--{k.replace('_', '-')}" for k in keys)  # noqa: E731
    if generation and classification:
        raise EdgezoError(f"{flag(classification)} (a classification task) and {flag(generation)} (a generation task) "
                          "cannot be combined: give one kind")
    if not generation and not classification:
        raise EdgezoError("a task from options needs --labels VALUE=WORDS,... (classification) or --response-column / "
                          "--messages-column (generation), with --train, --validation and --template")
    for key in ("train", "validation"):
        if key not in given:
            raise EdgezoError(f"a task from options needs --{key} FILE (JSONL, CSV/TSV or Parquet)")
    spec: dict[str, Any] = dict(given)
    if generation:
        spec["kind"] = "generation"
    else:
        if "template" not in given:
            raise EdgezoError("a classification task from options needs --template, e.g. --template \"Review: {text} Sentiment:\"")
        if "labels" not in given:
            raise EdgezoError("a classification task from options needs --labels, e.g. --labels 0=terrible,1=great")
        spec["labels"] = parse_label_option(given["labels"])
    return task_from_spec(spec, base or Path.cwd(), _FromOptions(), Path(given["train"]).stem)


def with_task_options(job: dict, options: TaskOptions) -> dict:
    """The job's settings with ``task`` set to the task of ``options`` (its JSON text, as a job
    announcement carries it), if any is given; naming a task twice is an error."""
    task = task_from_options(options)
    if task is None:
        return job
    if job.get("task") is not None:
        raise EdgezoError(f"--task {job['task']!r} and --train/--template/... both name the job's task: use one of them")
    return {**job, "task": task.ref}


def task_from_spec(spec: dict, base: Path, loc: _Located, default_name: str):
    from edgezo.tasks import Task

    kind = spec.get("kind", "classification")
    if kind not in KINDS:
        raise loc.error(f"unknown kind {kind!r}: use \"classification\" (label words) or \"generation\" (instruction tuning)", "kind")
    known = KNOWN_KEYS if kind == "classification" else GENERATION_KEYS
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise loc.error(f"unknown key {unknown[0]!r} for a {kind} task; known keys: {', '.join(known)}", unknown[0])

    def text_value(key: str, default: str | None = None, required: bool = True) -> str | None:
        value = spec.get(key, default)
        if value is None:
            if required:
                raise loc.error(f"missing key {key!r}: add {key} = \"...\"")
            return None
        if not isinstance(value, str) or not value.strip():
            raise loc.error(f"{key} must be a non-empty string (got {value!r})", key)
        return value

    name = text_value("name", default_name)
    fmt = text_value("format", required=False)
    if fmt is not None and fmt not in FORMATS:
        raise loc.error(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}", "format")
    files = {k: str((base / Path(text_value(k)).expanduser()).resolve()) for k in ("train", "validation")}
    if kind == "generation":
        return _generation_task(spec, name, fmt, files, text_value, loc)
    label_column = text_value("label_column", "label")
    template = text_value("template")
    mlm_template = text_value("mlm_template", template.rstrip() + " {mask}")
    fields: list[str] = []
    for key, value in (("template", template), ("mlm_template", mlm_template)):
        try:
            names = placeholders(value)
        except ValueError as e:
            raise loc.error(f"{key}: {e}", key) from None
        if key == "template" and MASK in names:
            raise loc.error("template (for causal LMs) must not contain {mask}: the label word follows the prompt; put {mask} in mlm_template", key)
        if key == "mlm_template" and names.count(MASK) != 1:
            raise loc.error("mlm_template must contain {mask} exactly once (where the label word goes)", key)
        fields += [n for n in names if n != MASK]
    if not fields:
        raise loc.error("template uses no column: put the text in, e.g. \"Review: {text}\\nSentiment:\"", "template")
    if label_column in fields:
        raise loc.error(f"template shows the label column {label_column!r}: the model would be told the answer", "template")
    values, causal_words = _labels(spec, "labels", loc, None)
    _, mlm_words = _labels(spec, "mlm_labels", loc, values) if "mlm_labels" in spec else (values, causal_words)
    source = TableSource(files["train"], files["validation"], fmt, label_column, values, tuple(dict.fromkeys(fields)))
    task = Task(
        name=name,
        label_names=values,
        causal_template=template,
        causal_verbalizers=causal_words,
        mlm_template=mlm_template,
        mlm_verbalizers=mlm_words,
        source=source,
    )
    return task


def _labels(spec: dict, key: str, loc: _Located, want: tuple[str, ...] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    table = spec.get(key)
    if table is None:
        raise loc.error(f"missing [{key}] table: list each label value with its label word, e.g. positive = \"great\"")
    if not isinstance(table, dict) or len(table) < 2:
        raise loc.error(f"[{key}] must map at least two label values to label words (got {table!r})", key)
    values, words = [], []
    for value, word in table.items():
        if not isinstance(word, str) or not word.strip():
            raise loc.error(f"[{key}] label {value!r} has empty label words: give the word(s) the model should answer", value, key)
        values.append(value)
        words.append(word if word[0].isspace() else " " + word)
    for k, word in enumerate(words):
        first = [w.strip() for w in words].index(word.strip())
        if first != k:
            raise loc.error(f"[{key}] gives labels {values[first]!r} and {values[k]!r} the same label words {word.strip()!r}", values[k], key)
    if want is not None and tuple(values) != want:
        raise loc.error(f"[{key}] must list the same labels as [labels], in the same order ({', '.join(want)})", key)
    return tuple(values), tuple(words)


def task_ref(task) -> str:
    """A user task as JSON text (what a job announcement carries): the template, label words and
    the data files' absolute paths (a device reading its own file overrides them with --data)."""
    s = task.source
    if task.kind == "generation":
        spec = {"kind": "generation", "name": task.name, "train": s.train, "validation": s.validation, "chat_template": s.chat}
        for key, value in (("template", s.template), ("prompt_column", s.prompt_column), ("response_column", s.response_column),
                           ("messages_column", s.messages_column), ("format", s.format)):
            if value is not None:
                spec[key] = value
        return json.dumps(spec, sort_keys=True)
    spec = {
        "name": task.name,
        "train": s.train,
        "validation": s.validation,
        "label_column": s.label_column,
        "template": task.causal_template,
        "mlm_template": task.mlm_template,
        "labels": dict(zip(s.label_values, task.causal_verbalizers)),
        "mlm_labels": dict(zip(s.label_values, task.mlm_verbalizers)),
    }
    if s.format:
        spec["format"] = s.format
    return json.dumps(spec, sort_keys=True)


# -- the data files -------------------------------------------------------------------------------


def data_file(task, data: str | Path | None, split: str) -> Path:
    """The file of ``split`` ("train" or "dev"): ``--data`` given as a file replaces the training
    file (each device's own data); given as a folder, the task's file names are looked up in it."""
    s: TableSource = task.source
    named = Path(s.train if split == "train" else s.validation)
    if data is None:
        return named
    data = Path(data).expanduser()
    if data.is_file():
        return data if split == "train" else named
    if data.is_dir():
        return data / named.name
    raise EdgezoError(f"--data {data} does not exist: pass this device's data file or a folder holding {named.name}")


def file_format(path: Path, declared: str | None) -> str:
    if declared:
        return declared
    fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise EdgezoError(f"{path}: cannot tell the format from the suffix {path.suffix!r}: name it .jsonl, .csv, .tsv or .parquet, or set format in the task file")
    return fmt


def read_rows(path: Path, fmt: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) pairs; the location is ``FILE:LINE`` (Parquet: ``FILE:row N``)."""
    if not path.is_file():
        raise EdgezoError(f"missing data file {path}: check the task file's train/validation paths or --data")
    if fmt == "jsonl":
        from edgezo.tasks import json_objects

        for n, obj in json_objects(path, lambda n, col, what: EdgezoError(f"{path}:{n}:{col}: {what}")):
            yield f"{path}:{n}", obj
    elif fmt in ("csv", "tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="," if fmt == "csv" else "\t")
            header = next(reader, None)
            if not header:
                raise EdgezoError(f"{path}:1:1: empty file: the first line must name the columns")
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise EdgezoError(f"{path}:{reader.line_num}:1: expected {len(header)} fields (as the header), got {len(row)}")
                yield f"{path}:{reader.line_num}", dict(zip(header, row))
    elif fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise EdgezoError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow (or convert the file to JSONL/CSV)") from None
        for n, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"{path}:row {n}", row
    else:
        raise EdgezoError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def _label_key(value: Any) -> str:
    """A label cell as the text the task file's [labels] keys are: JSON true/false as
    "true"/"false", numbers as written (1, not 1.0, for integral floats)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_examples(task, data: str | Path | None, split: str):
    """A user task's examples of ``split``: only the template's columns are kept, as text."""
    from edgezo.tasks import Example

    if task.kind == "generation":
        return _read_generation(task, data, split)
    s: TableSource = task.source
    path = data_file(task, data, split)
    fmt = file_format(path, s.format)
    index = {v: i for i, v in enumerate(s.label_values)}
    out = []
    for at, row in read_rows(path, fmt):
        for column in (*s.columns, s.label_column):
            if column not in row:
                raise EdgezoError(f"{at}: no column {column!r} (the task's {'label column' if column == s.label_column else 'template'} uses it; "
                                  f"this row has {', '.join(map(repr, row)) or 'none'})")
        label = _label_key(row[s.label_column])
        if label not in index:
            raise EdgezoError(f"{at}: column {s.label_column!r}: label {label!r} is not one of the task's labels ({', '.join(s.label_values)}): add it to [labels] or fix the row")
        fields = {}
        for column in s.columns:
            value = row[column]
            fields[column] = "" if value is None else value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        out.append(Example(fields, index[label]))
    if not out:
        raise EdgezoError(f"{path}: no examples in the file")
    return out



# -- generation (instruction tuning) tasks --------------------------------------------------------


@dataclass(frozen=True)
class GenerationSource:
    """Where a generation task's examples are: prompt (a column, or a template over columns) and
    response columns, or one column of chat ``messages`` (a list of {role, content}, the last
    the assistant's answer)."""

    train: str
    validation: str
    format: str | None
    template: str | None
    prompt_column: str | None
    response_column: str | None
    messages_column: str | None
    chat: bool | None  # wrap prompts in the model's chat template (None: when the tokenizer has one)
    columns: tuple[str, ...]


@dataclass(frozen=True)
class GenerationTask:
    """Instruction tuning: the loss is the causal-LM loss over the response tokens only;
    examples carry ``prompt``/``response`` text or ``messages`` (JSON) in their fields."""

    name: str
    source: GenerationSource
    kind: str = "generation"

    @property
    def ref(self) -> str:
        return task_ref(self)

    @property
    def label_names(self) -> tuple[str, ...]:
        return ()

    def verbalizers(self, kind: str) -> tuple[str, ...]:
        """No label words: the whole response is the target."""
        if kind != "causal":
            raise EdgezoError(f"generation task {self.name} needs a causal LM (this model is a masked LM)")
        return ()

    def render(self, tokenizer, example) -> tuple[str, str]:
        """``(prompt, response)`` text: through the tokenizer's chat template when the task asks
        for it (default: when the tokenizer has one), so the model sees the turns it was tuned on."""
        s = self.source
        if s.messages_column:
            messages = json.loads(example.fields["messages"])
            prompt_messages, answer = messages[:-1], messages[-1]["content"]
        else:
            text = s.template.format(**example.fields) if s.template else example.fields[s.prompt_column]
            prompt_messages, answer = [{"role": "user", "content": text}], example.fields["response"]
        chat = s.chat if s.chat is not None else bool(getattr(tokenizer, "chat_template", None))
        if chat:
            if not getattr(tokenizer, "chat_template", None):
                raise EdgezoError(f"task {self.name} asks for the chat template, but this model's tokenizer has none: set chat_template = false")
            prompt = tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
            full = tokenizer.apply_chat_template([*prompt_messages, {"role": "assistant", "content": answer}], tokenize=False)
            if full.startswith(prompt):
                return prompt, full[len(prompt):]
            return prompt, answer + (tokenizer.eos_token or "")
        if s.messages_column:
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in prompt_messages) + "\nassistant:"
        else:
            prompt = prompt_messages[0]["content"]
        return prompt, " " + answer.lstrip() + (tokenizer.eos_token or "")

    def reference(self, example) -> str:
        """The expected answer (exact match and ROUGE-L compare generations with it)."""
        if self.source.messages_column:
            return json.loads(example.fields["messages"])[-1]["content"]
        return example.fields["response"]


def _generation_task(spec: dict, name: str, fmt, files: dict, text_value, loc: _Located) -> GenerationTask:
    messages = text_value("messages_column", required=False)
    template = text_value("template", required=False)
    prompt_column = text_value("prompt_column", required=False)
    response_column = text_value("response_column", required=False)
    chat = spec.get("chat_template")
    if chat is not None and not isinstance(chat, bool):
        raise loc.error(f"chat_template must be true or false (got {chat!r})", "chat_template")
    if messages:
        if template or prompt_column or response_column:
            raise loc.error("messages_column holds whole conversations: drop template, prompt_column and response_column", "messages_column")
        columns = (messages,)
    else:
        if not response_column:
            raise loc.error("missing key 'response_column' (the answer the model learns) or 'messages_column' (chat conversations)")
        if bool(template) == bool(prompt_column):
            raise loc.error("give the prompt as prompt_column = \"...\" or as template = \"... {column} ...\" (one of them)",
                            "template" if template else None)
        if template:
            try:
                names = placeholders(template)
            except ValueError as e:
                raise loc.error(f"template: {e}", "template") from None
            if not names:
                raise loc.error("template uses no column: e.g. \"{instruction}\\n\\n{input}\"", "template")
            if response_column in names:
                raise loc.error(f"template shows the response column {response_column!r}: the model would be told the answer", "template")
            columns = (*dict.fromkeys(names), response_column)
        else:
            columns = (prompt_column, response_column)
    source = GenerationSource(files["train"], files["validation"], fmt, template, prompt_column, response_column, messages, chat, columns)
    return GenerationTask(name, source)


def _read_generation(task: GenerationTask, data, split: str):
    from edgezo.tasks import Example

    s = task.source
    path = data_file(task, data, split)
    out = []
    for at, row in read_rows(path, file_format(path, s.format)):
        for column in s.columns:
            if column not in row:
                raise EdgezoError(f"{at}: no column {column!r} (the task uses it; this row has {', '.join(map(repr, row)) or 'none'})")
        if s.messages_column:
            messages = row[s.messages_column]
            if isinstance(messages, str):
                try:
                    messages = json.loads(messages)
                except ValueError:
                    messages = None
            if (not isinstance(messages, list) or not messages
                    or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)):
                raise EdgezoError(f"{at}: column {s.messages_column!r} must be a list of {{\"role\": ..., \"content\": ...}} messages")
            if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
                raise EdgezoError(f"{at}: column {s.messages_column!r}: the last message must be the assistant's non-empty answer")
            out.append(Example({"messages": json.dumps(messages)}, 0))
            continue
        fields = {c: "" if row[c] is None else str(row[c]) for c in s.columns}
        if not fields[s.response_column].strip():
            raise EdgezoError(f"{at}: column {s.response_column!r} is empty: every example needs a response to learn")
        fields["response"] = fields.pop(s.response_column)
        if s.prompt_column and not fields[s.prompt_column].strip():
            raise EdgezoError(f"{at}: column {s.prompt_column!r} is empty: every example needs a prompt")
        out.append(Example(fields, 0))
    if not out:
        raise EdgezoError(f"{path}: no examples in the file")
    return out
