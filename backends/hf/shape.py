"""The cost model's view of a loaded model (``edgezo.costmodel.ModelShape``) and a job's typical
sequence length, from the shared model layer: no framework is imported here.

Why here and not in a backend: planning (``edgezo.planner``, ``coordinate --plan``, ``simulate
--devices``) needs only the model's shape, which every ``SplitExecutor`` knows (its units, their
weights, the trainable tensors per block) together with the Hugging Face configuration; reading it
from a torch replica forced one to be built. The simulate and coordinate jobs take both from here;
``edgezo.backends.torch.profiling.model_shape`` is this with a torch model's configuration, for
``edgezo profile``.
"""

from __future__ import annotations

import numpy as np

from edgezo.costmodel import ModelShape
from edgezo.errors import EdgezoError
from edgezo.jobdata import make_batcher


def model_shape(ex, config, name: str, digest: str = "") -> ModelShape:
    """The shape of the split model ``ex`` (a ``SplitExecutor``) whose Hugging Face configuration
    is ``config``."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None) or 4 * hidden
    n = ex.num_layers
    head = ex.unit_numel["head"]
    if head == 0 or ex.head_is_tied():
        head += hidden * config.vocab_size
    unit_trainable = [sum(ex.tensor_numel[nm] for nm in names) for names in ex.unit_tensors.values()]
    tensors = tuple(sum(1 for nm in ex.names if ex.name_block[nm] == b) for b in (1, 2))
    return ModelShape(
        name=name, layers=n, split=ex.split,
        layer_params=tuple(ex.unit_numel[f"layers.{i}"] for i in range(n)),
        head_params=head, hidden=hidden, intermediate=intermediate, heads=heads, kv_hidden=kv_heads * head_dim,
        vocab=config.vocab_size, total_params=ex.parameter_count(), trainable=(ex.trainable_numel(1), ex.trainable_numel(2)),
        trainable_tensors=tensors, largest_unit_trainable=max(unit_trainable, default=0), digest=digest,
    )


def typical_tokens(ex, task, examples, batch_size: int, seed: int = 0, batches: int = 8) -> int:
    """Padded tokens per sequence of a typical batch of the job (the planner's ``tokens``): the mean
    padded length of a few seeded random batches of ``batch_size`` examples, encoded as the job
    encodes them (prompt, left truncation to ``max_length``, right padding to the longest)."""
    if not examples:
        raise EdgezoError("no examples to measure the job's typical sequence length on")
    make_batch = make_batcher(ex, task, examples)
    rng = np.random.default_rng(seed)
    size = min(batch_size, len(examples))
    lengths = [int(make_batch(sorted(rng.choice(len(examples), size=size, replace=False).tolist())).input_ids.shape[1])
               for _ in range(batches)]
    return max(1, round(sum(lengths) / len(lengths)))
