"""Run a federated simulation from Python, watch it round by round, stop it and resume it.

    python examples/simulate_api.py [--model FOLDER_OR_HUB_ID] [--data SST2_FOLDER] [--out runs/example]

Without --model it fine-tunes the default SmolLM2-135M-Instruct (a few minutes on a laptop CPU);
tests/tiny.py builds a tiny model to try it in seconds:
    python -c "import sys; sys.path.insert(0, 'tests'); from tiny import save_tiny; save_tiny('runs/tiny')"
    python examples/simulate_api.py --model runs/tiny
"""

from __future__ import annotations

import argparse

import edgezo


class Progress(edgezo.Callback):
    """Prints each round and stops the job after ``stop_after`` rounds (it stays resumable)."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after = stop_after

    def on_round(self, record: edgezo.RoundRecord) -> None:
        acc = f", accuracy {100 * record.eval_accuracy:.1f}%" if record.eval_accuracy is not None else ""
        loss = f"loss {record.train_loss:.4f}" if record.train_loss is not None else "before training"
        print(f"round {record.round}: {loss}{acc}, {record.flops:.3g} forward FLOPs so far")
        if self.stop_after is not None and record.round == self.stop_after:
            raise edgezo.JobStopped(f"stopping after round {record.round} to show --resume")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--out", default="runs/example")
    args = ap.parse_args()
    job = dict(model=args.model, data=args.data, out=args.out, clients=3, rounds=4, local_steps=1, batch_size=8,
               max_length=64, eval_samples=64, train_samples=600, lr=1e-3)
    try:
        first = edgezo.simulate(**job, overwrite=True, callbacks=Progress(stop_after=2))
    except edgezo.EdgezoError as e:  # a bad option or folder: one line, no SystemExit
        raise SystemExit(f"error: {e}")
    print(f"stopped: {first.stopped}; {len(first.records)} records in {first.metrics_path}")
    result = edgezo.simulate(out=args.out, resume=True, callbacks=Progress())  # the stopped run's settings
    print(f"accuracy {result.records[0].eval_accuracy:.3f} -> {result.final_accuracy:.3f}; "
          f"final model {result.fingerprint[:16]}... in {result.model_path}")
    fig = edgezo.accuracy_figure([r.to_dict() for r in result.records], "accuracy against compute")
    fig.savefig(f"{args.out}/example.png")  # a Figure of its own: a notebook can also just display it


if __name__ == "__main__":
    main()
