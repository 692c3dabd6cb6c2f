"""MLX executor (Apple MLX: Metal on macOS, CPU on Linux) for the LLaMA family, split into two blocks.

``perturb``: the canonical generator in MLX, equal to ``edgezo.perturb`` (Rademacher bit for bit).
``executor``: :class:`MLXExecutor`, the executor protocol over mlx-lm's model definitions.
``factory``: :func:`build_mlx_executor`, the counterpart of ``build_torch_executor``.

Importing this package does not import MLX; the submodules do.
"""
