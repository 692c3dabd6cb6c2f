"""MLX executor (Apple MLX: Metal on macOS, CPU on Linux) for the LLaMA family, split into two blocks.

``perturb``: the canonical generator in MLX, equal to ``edgezo.perturb`` (Rademacher bit for bit).
``executor``: :class:`MLXExecutor`, the executor protocol over mlx-lm's model definitions.
``loading``: a safetensors folder into mlx-lm's model, in float32. ``lora``: LoRA on mlx-lm's layers.
``factory``: :func:`build_mlx_executor`, the counterpart of ``build_torch_executor``.

The model layer (where the weights are, the trainable set, LoRA initialisation, the tokenizer,
the architecture's units) is the one every backend shares, ``edgezo.backends.hf``; nothing here
imports the torch backend. Importing this package does not import MLX; the submodules do.
"""
