"""Whether a device that is behind should download a checkpoint or replay the seed log: a cost
heuristic (pure arithmetic, no I/O)."""

from __future__ import annotations


def checkpoint_worth_it(
    missing_rounds: int,
    directions_per_round: int,
    trainable_numel: int,
    generate_rate: float = 2e8,
    download_rate: float = 1.25e7,
) -> bool:
    """Whether downloading a checkpoint beats replaying the missed seed-log entries.

    Cost model (seconds), deliberately simple since both sides are rough:

    * replay: every missed round regenerates each of its directions over the trainable
      parameters, ``missing_rounds * directions_per_round * trainable_numel / generate_rate``
      (``generate_rate``: elements of random direction generated and applied per second,
      default 2e8);
    * download: float32 weights, ``4 * trainable_numel / download_rate + 1``
      (``download_rate`` in bytes/s, default 1.25e7 = 100 Mbit/s; the 1 s covers connecting,
      verifying and loading).

    Returns True when the download is strictly cheaper. E.g. 1M trainable parameters with 8
    directions per round: replay costs 0.04 s a round, a download 1.32 s, so download from 34
    missed rounds on.
    """
    if min(missing_rounds, directions_per_round, trainable_numel) < 0:
        raise ValueError("missing_rounds, directions_per_round and trainable_numel must be >= 0")
    if generate_rate <= 0 or download_rate <= 0:
        raise ValueError("generate_rate and download_rate must be > 0")
    replay_s = missing_rounds * directions_per_round * trainable_numel / generate_rate
    download_s = 4 * trainable_numel / download_rate + 1.0
    return download_s < replay_s
