"""PyTorch executor (CPU, CUDA where present) for Hugging Face models split into two blocks."""
