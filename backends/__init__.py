"""Executors: torch (CPU/CUDA); MLX and int8 to come. Import as edgezo.backends.<name>."""
