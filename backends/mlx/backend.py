"""The mlx backend's registration (``edgezo.backends.registry``); imports no MLX."""

from edgezo.backends.registry import Backend

MLX = Backend(
    name="mlx",
    install='pip install "edgezo[mlx]" (installs mlx[cpu] on Linux, mlx on macOS)',
    factory="edgezo.backends.mlx.factory:build_mlx_executor",
    imports=("mlx.core", "mlx_lm"),  # plain mlx installs on Linux but does not import
    weight_factor=1.5,  # benchmarks/backends.py: 1.49x the fp32 weights
    elsewhere="chooses its own device (the GPU on Apple silicon)",
    auto_rank=None, apple_rank=0,  # on Linux CPUs slower than torch: auto never picks it there
)
