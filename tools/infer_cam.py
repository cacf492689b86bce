"""Per-image CAM mosaics, JSON records (probabilities, decisions, boxes in original pixels) and optional maps.

``-o infer.input=IMAGE|FOLDER|GLOB|LIST.csv|split:test``; outputs in ``output_dir/infer.subdir``.
"""

import sys

from chexcam.cli import run_tool


def main(cfg, args):
    from chexcam.engine import infer

    summary = infer.run(cfg)
    print(f"{summary['images']} images explained, {summary['skipped']} skipped; outputs in {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, __doc__))
