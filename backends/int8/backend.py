"""The int8 backend's registration (``edgezo.backends.registry``); imports no torch."""

from edgezo.backends.registry import Backend

INT8 = Backend(
    name="int8",
    install="pip install edgezo (int8 needs torch and gguf, both core dependencies; reinstall them)",
    factory="edgezo.backends.int8.factory:build_int8_executor",
    finds=("torch", "gguf"),
    weight_factor=0.6,  # benchmarks/backends.py: 0.45x from the GGUF, 0.57x Q8_0
    devices=("cpu",),
    elsewhere="runs on the CPU only",
    auto_rank=1, apple_rank=2,
)
