"""llama.cpp loads edgezo's GGUF export: a SmolLM2 model folder (by default the base model; pass an
edgezo job's ``OUT/model``, e.g. a norm-trained one) written as Q8_0 by `edgezo export`, loaded
with ``llama_cpp.Llama`` (llama-cpp-python), checked against transformers: the token ids of a
chat-rendered prompt, the next-token logits and a few greedy tokens, both against the float32
folder (Q8_0 rounding included) and against the export read back by transformers (dequantized:
what is left is llama.cpp's own arithmetic, so a wrong tensor layout would show here).

    pip install llama-cpp-python==0.3.36    # no wheel on PyPI: builds llama.cpp (cmake, C++; ~25 min on 2 cores)
    python benchmarks/llamacpp_load.py --model runs/instruct/job-norm/model

The tiny LLaMA of the tests cannot be used: its WordLevel tokenizer has no BPE merges, and
llama.cpp refuses a ``gpt2`` vocabulary without them ("cannot find tokenizer merges").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPARED = ("next_token_top1_equal", "next_token_top5_overlap", "next_token_top5_logprob_max_abs_diff", "greedy_prefix_agreement", "transformers_text")
PROMPT = "Tom has 3 apples and buys 5 more. How many apples does he have?"


def llama_cpp_greedy(llm, ids: list[int], n: int, stops: set[int]) -> list[int]:
    """Greedy tokens from llama.cpp (top-1, no repeat penalty), stopping at an end token."""
    out = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        if token in stops or len(out) == n:
            break
        out.append(token)
    return out


def check(folder: Path, gguf: Path, prompt: str, n: int, threads: int) -> dict:
    """Load ``gguf`` with llama.cpp and compare it with transformers' float32 ``folder``."""
    import numpy as np
    import torch
    from llama_cpp import Llama, __version__

    from edgezo.backends.torch.loading import load_model

    model, tokenizer, _ = load_model(str(folder))
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stops = {tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>",) if t in tokenizer.get_vocab())}
    started = time.perf_counter()
    llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=threads, logits_all=True, verbose=False)  # logits_all: scores kept
    load_s = time.perf_counter() - started
    their_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    started = time.perf_counter()
    their_tokens = llama_cpp_greedy(llm, ids, n, stops)
    generate_s = time.perf_counter() - started
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([ids])).logits[0, -1].double().numpy()
        new = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=n,
                             do_sample=False, eos_token_id=sorted(stops), pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
    our_tokens = [t for t in new if t not in stops][:n]
    agree = next((k for k, (a, b) in enumerate(zip(our_tokens, their_tokens)) if a != b), min(len(our_tokens), len(their_tokens)))
    top5 = lambda z: set(np.argsort(z)[-5:].tolist())  # noqa: E731
    log_softmax = lambda z: z - np.log(np.exp(z - z.max()).sum()) - z.max()  # noqa: E731
    reader_arch = llm.metadata.get("general.architecture")
    return {
        "llama_cpp_python": __version__, "gguf": str(gguf), "gguf_bytes": gguf.stat().st_size, "architecture": reader_arch,
        "n_vocab": llm.n_vocab(), "chat_template_in_gguf": "tokenizer.chat_template" in llm.metadata, "load_s": round(load_s, 2),
        "prompt_tokens": len(ids), "same_token_ids": their_ids == ids,
        "next_token_top1_equal": int(np.argmax(ours)) == int(np.argmax(theirs)), "next_token_top5_overlap": len(top5(ours) & top5(theirs)),
        "next_token_top5_logprob_max_abs_diff": round(float(np.max(np.abs(log_softmax(ours) - log_softmax(theirs))[sorted(top5(ours))])), 4),
        "greedy_tokens": n, "greedy_prefix_agreement": agree, "generate_s": round(generate_s, 2),
        "llama_cpp_text": tokenizer.decode(their_tokens), "transformers_text": tokenizer.decode(our_tokens),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model folder (default: SmolLM2-135M-Instruct, the default base model)")
    ap.add_argument("--gguf", help="where to write the export (default: a temporary folder)")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--tokens", type=int, default=16, help="greedy tokens to generate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit("llamacpp_load.py needs llama-cpp-python: pip install llama-cpp-python==0.3.36 (a source build: cmake and a C++ compiler)")
    from edgezo.backends.hf.source import resolve_model

    folder = Path(args.model) if args.model else resolve_model(None).folder
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(args.gguf) if args.gguf else Path(tmp) / "model-q8_0.gguf"
        command = [sys.executable, "-m", "edgezo", "export", str(folder), "--gguf", str(gguf)]
        print(f"$ edgezo export {folder} --gguf {gguf}", flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        export_s = time.perf_counter() - started
        result = {"model": str(folder), "export_s": round(export_s, 1), **check(folder, gguf, args.prompt, args.tokens, args.threads)}
        # transformers on the export's own (dequantized Q8_0) weights: what is left is llama.cpp's arithmetic, not rounding
        from edgezo.backends.hf.source import resolve_model as read_back

        readback = check(read_back(str(gguf), cache_dir=Path(tmp) / "cache").folder, gguf, args.prompt, args.tokens, args.threads)
        result["against_readback"] = {k: readback[k] for k in COMPARED}
    print(f"llama.cpp (llama-cpp-python {result['llama_cpp_python']}) loaded the Q8_0 export of {folder} "
          f"({result['gguf_bytes']:,} bytes, {result['architecture']}, vocabulary {result['n_vocab']:,}, chat template "
          f"{'kept' if result['chat_template_in_gguf'] else 'missing'}) in {result['load_s']} s; export {result['export_s']} s")
    print(f"  prompt token ids identical to transformers': {result['same_token_ids']} ({result['prompt_tokens']} tokens)")
    for label, r in (("float32 source", result), ("export read back", result["against_readback"])):
        print(f"  vs transformers on the {label}: next token top-1 equal {r['next_token_top1_equal']}, top-5 overlap "
              f"{r['next_token_top5_overlap']}/5, log-prob max |diff| over its top 5 {r['next_token_top5_logprob_max_abs_diff']}; "
              f"greedy: first {r['greedy_prefix_agreement']} of {args.tokens} tokens equal")
    print(f"  llama.cpp ({result['generate_s']} s): {result['llama_cpp_text']!r}\n  transformers (float32):  {result['transformers_text']!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
