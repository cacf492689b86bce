"""Evaluate a checkpoint: ``python tools/eval.py -c configs/malaria.yaml [-o model.weights=PATH]``.

Without ``model.weights`` it evaluates ``output_dir/best.pdparams`` on ``eval.split``; writes
metrics.json, report.md and the plots into ``output_dir`` and prints the table.
"""

import sys

from chexcam.cli import run_tool


def main(cfg, args):
    from chexcam.engine import evaluate

    result = evaluate.run(cfg)
    print(result["table"])
    for note in result["metrics"]["notes"]:
        print(f"note: {note}")
    print(f"metrics.json, report.md and plots in {result['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, __doc__))
