"""PyTorch executor (CPU, CUDA where present) for Hugging Face models split into two blocks.

``perturb``: the canonical generator in torch (the kernels int8 reuses); ``executor``:
:class:`TorchExecutor`; ``loading``: the float32 transformers model of a ``--model``; ``factory``:
:func:`build_torch_executor`; ``profiling``: what ``edgezo profile`` measures; ``device``:
``--device auto|cpu|cuda``.
"""
