"""Executors: torch (CPU, CUDA), mlx (Apple MLX), int8 (llama.cpp-style blocks), on one shared
Hugging Face model layer (``hf``); ``choice`` picks one for a device. Import as edgezo.backends.<name>."""
