"""Evaluate a checkpoint: ``python tools/eval.py -c configs/malaria.yaml [-o model.weights=PATH]``.

Without ``model.weights`` it evaluates ``output_dir/best.pdparams`` on ``eval.split``; writes
metrics.json, report.md and the plots into ``output_dir`` and prints the table. Probabilities come from
the Paddle Inference predictor where the model exports (``infer.engine``), with ``infer.workers`` processes
decoding ahead of it. Several processes: ``python -m paddle.distributed.launch --nproc_per_node N
tools/eval.py ...`` (each rank predicts its share; rank 0 writes the report).
"""

import os
import sys

# Set before paddle loads: its OpenMP threads sleep as soon as a kernel ends instead of spinning for 200 ms
# (Intel OpenMP's default), which leaves the cores to the worker processes that decode and write around the
# model (and, on a shared machine, to everyone else). Measured: 1.5-1.8x images/s on 2 cores.
os.environ.setdefault("KMP_BLOCKTIME", "0")

from chexcam.cli import run_tool  # noqa: E402


def main(cfg, args):
    from chexcam.engine import evaluate

    result = evaluate.run(cfg)
    if result["metrics"] is None:  # a rank other than 0: rank 0 reports
        return 0
    print(result["table"])
    for note in result["metrics"]["notes"]:
        print(f"note: {note}")
    print(f"metrics.json, report.md and plots in {result['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, __doc__))
