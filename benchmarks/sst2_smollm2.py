"""The headline run: SmolLM2-135M-Instruct fine-tuned with FedSPZO by 4 simulated devices on
SST-2 (IID, 30 rounds of 2 local steps, the defaults otherwise), evaluated on the full dev split
(872) before and after. Prints accuracy before/after, forward FLOPs and wall time.

    python benchmarks/sst2_smollm2.py [--out runs/bench-sst2] [extra edgezo simulate options]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def main():
    args = sys.argv[1:]
    out = Path("runs/bench-sst2")
    if "--out" in args:
        out = Path(args[args.index("--out") + 1])
    else:
        args += ["--out", str(out)]
    cmd = ["edgezo", "simulate", "--task", "sst2", "--clients", "4", "--rounds", "30", "--local-steps", "2", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    s = json.loads((out / "summary.json").read_text())
    gain = 100 * (s["final_accuracy"] - s["initial_accuracy"])
    print(f"accuracy before {100 * s['initial_accuracy']:.1f}%  after {100 * s['final_accuracy']:.1f}%  ({gain:+.1f} points)")
    print(f"forward FLOPs {s['flops']:.3g}, wall {s['wall_s'] / 60:.1f} min, bytes up/down per device "
          f"{s['bytes_up_per_device']:.0f}/{s['bytes_down_per_device']:.0f}")


if __name__ == "__main__":
    main()
