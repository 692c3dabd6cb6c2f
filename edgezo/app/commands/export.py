"""`edgezo export`: a trained model folder as a Q8_0 GGUF file (llama.cpp's format), which the
int8 backend (`--backend int8 --model FILE.gguf`), transformers and llama.cpp load.

The other exports need no command: every job writes ``OUT/trainable.safetensors`` (the trained
tensors only) and, for LoRA, ``OUT/adapter/`` (a PEFT adapter) beside ``OUT/model/``.
"""

from __future__ import annotations

from pathlib import Path

import click
from edgezo.backends.hf.gguf_export import export_gguf


@click.command(context_settings={"show_default": True})
@click.argument("model_folder", type=click.Path(file_okay=False, exists=True))
@click.option("--gguf", "out", type=click.Path(dir_okay=False), help="Where to write the GGUF file. [default: MODEL_FOLDER-q8_0.gguf beside the folder]")
def export(model_folder, out):
    """Write MODEL_FOLDER (a LLaMA-family model, e.g. an edgezo job's OUT/model) as a Q8_0 GGUF.

    Example: edgezo export runs/sst2/model  (writes runs/sst2/model-q8_0.gguf)
    """
    folder = Path(model_folder)
    target = Path(out) if out else folder.parent / f"{folder.resolve().name}-q8_0.gguf"
    path = export_gguf(folder, target)
    click.echo(f"wrote {path} ({path.stat().st_size:,} bytes, Q8_0)")
