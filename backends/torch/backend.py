"""The torch backend's registration (``edgezo.backends.registry``); imports no torch."""

from edgezo.backends.registry import Backend

TORCH = Backend(
    name="torch",
    install='pip install edgezo (torch is a core dependency; reinstall it: pip install "torch==2.13.0")',
    factory="edgezo.backends.torch.factory:build_torch_executor",
    finds=("torch",),
    weight_factor=1.35,  # benchmarks/backends.py: a step's peak above the runtime was 1.32x the fp32 weights
    devices=("cpu", "cuda"),
    auto_rank=0, apple_rank=1,
    takes_device=True,
)
