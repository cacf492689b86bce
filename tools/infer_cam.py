"""Per-image CAM mosaics, JSON records (probabilities, decisions, boxes in original pixels) and optional maps.

``-o infer.input=IMAGE|FOLDER|GLOB|LIST.csv|split:test``; outputs in ``output_dir/infer.subdir``.
``-o infer.mosaic=false`` writes the JSON records alone; ``-o infer.save_npz=true`` adds the maps.
Several processes: ``python -m paddle.distributed.launch --nproc_per_node N tools/infer_cam.py ...``.
"""

import os
import sys

# Set before paddle loads: its OpenMP threads sleep as soon as a kernel ends instead of spinning for 200 ms
# (Intel OpenMP's default), which leaves the cores to the worker processes that decode and write around the
# model (and, on a shared machine, to everyone else). Measured: 1.5-1.8x images/s on 2 cores.
os.environ.setdefault("KMP_BLOCKTIME", "0")

from chexcam.cli import run_tool  # noqa: E402

#: skipped files listed on the terminal (all of them are in summary.json)
SHOW_SKIPPED = 20


def main(cfg, args):
    from chexcam.engine import infer, pipeline

    summary = infer.run(cfg)
    if pipeline.dist_env()[0] != 0:
        return 0
    print(f"{summary['images']} images explained, {summary['skipped']} skipped; outputs in {summary['output_dir']}")
    for reason in summary["bad_files"][:SHOW_SKIPPED]:
        print(f"skipped: {reason}")
    if summary["skipped"] > SHOW_SKIPPED:
        print(f"... and {summary['skipped'] - SHOW_SKIPPED} more (summary.json lists them all)")
    if summary.get("viewer"):
        print(f"viewer: {summary['viewer']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, __doc__))
