"""Plot the training curves (loss, validation AUROC, learning rate per epoch) of a run's history.jsonl.

Example: -c configs/malaria.yaml -o output_dir=output/malaria [--out curves.png]
Writes history.png beside output_dir/history.jsonl unless --out names another file; eval.py does the same.
"""

import sys

from chexcam.cli import build_parser, run_tool
from chexcam.errors import ChexcamError


def main(cfg, args):
    from chexcam.plots import history_png

    path = history_png(args.run or cfg.output_dir, args.out)
    if path is None:
        raise ChexcamError(f"no history.jsonl with rows in {args.run or cfg.output_dir}")
    print(path)
    return 0


def parser():
    p = build_parser(__doc__)
    p.add_argument("run", nargs="?", default=None, help="a training output_dir or its history.jsonl (default: output_dir)")
    p.add_argument("--out", default=None, help="PNG to write (default: history.png beside the history)")
    return p


if __name__ == "__main__":
    sys.exit(run_tool(main, __doc__, parser=parser()))
