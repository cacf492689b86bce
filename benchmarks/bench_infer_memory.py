"""Peak RSS of ``tools/infer_cam.py`` over many images vs. few: inference must stream in constant memory.

Runs the tool as a fresh process on N1 (default 20) and N2 (default 200) images -- the 1024-px NIH images of
``data/chestxray14_sample`` and ``../shared/data`` hard-linked (or copied) under distinct names over and over
(the tool reads every real file once, so symbolic links to the same file would count once), or synthetic
1024x1024 radiograph-sized PNGs without them -- and
prints each run's peak resident set size (``getrusage`` of the child) and wall time. Exit status 1 when the
large run's peak exceeds the small run's by more than ``--tolerance`` (default 20%).

    python benchmarks/bench_infer_memory.py [--small 20] [--large 200] [-c configs/chestxray14.yaml]
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [os.path.join(ROOT, "data", "chestxray14_sample", "images"),
           os.path.join(ROOT, "..", "shared", "data", "chestxray14", "images")]

CHILD = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def make_inputs(folder: str, n: int) -> None:
    """``n`` distinct image files in ``folder``: hard links to (or copies of) the NIH images in turn, or
    synthetic PNGs."""
    os.makedirs(folder, exist_ok=True)
    sources = sorted({os.path.basename(p): p for d in SOURCES for p in glob.glob(os.path.join(d, "*.png"))}.values())
    if not sources:
        rng = np.random.default_rng(0)
        for i in range(min(n, 12)):
            path = os.path.join(folder, f"synthetic_{i:02d}.png")
            cv2.imwrite(path, cv2.GaussianBlur(rng.integers(0, 255, (1024, 1024), np.uint8), (0, 0), 8))
        sources = sorted(glob.glob(os.path.join(folder, "synthetic_*.png")))
    for i in range(len(os.listdir(folder)), n):
        dst = os.path.join(folder, f"img_{i:05d}.png")
        try:
            os.link(sources[i % len(sources)], dst)
        except OSError:  # another file system
            shutil.copyfile(sources[i % len(sources)], dst)


def peak_rss_mb(config: str, folder: str, out: str, extra) -> tuple:
    cmd = [sys.executable, os.path.join(ROOT, "tools", "infer_cam.py"), "-q", "-c", config,
           "-o", "model.allow_random=true", "-o", f"infer.input={folder}", "-o", f"output_dir={out}", *extra]
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", CHILD, *cmd], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"infer_cam.py failed:\n{res.stderr[-2000:]}")
    kb = int(res.stdout.strip().splitlines()[-1])
    return kb / 1024.0, time.time() - t0, res.stdout.strip().splitlines()[-2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", default=os.path.join(ROOT, "configs", "chestxray14.yaml"))
    p.add_argument("--small", type=int, default=20)
    p.add_argument("--large", type=int, default=200)
    p.add_argument("--tolerance", type=float, default=0.20)
    p.add_argument("-o", "--override", action="append", default=[], help="extra -o KEY=VALUE for infer_cam.py")
    args = p.parse_args()
    extra = [a for kv in args.override for a in ("-o", kv)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.small, args.large):
            folder = os.path.join(tmp, f"in_{n}")
            make_inputs(folder, n)
            mb, secs, line = peak_rss_mb(args.config, folder, os.path.join(tmp, f"out_{n}"), extra)
            rows.append((n, mb, secs))
            print(f"{n:5d} images: peak RSS {mb:8.1f} MB, {secs:6.1f} s ({secs / n:.2f} s/image) -- {line}",
                  flush=True)
    ratio = rows[1][1] / rows[0][1]
    verdict = "OK" if ratio <= 1.0 + args.tolerance else "FAIL"
    print(f"peak RSS {rows[1][0]} / {rows[0][0]} images = {ratio:.3f} (limit {1 + args.tolerance:.2f}): {verdict}")
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
