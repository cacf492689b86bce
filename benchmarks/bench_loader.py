"""Loader throughput from raw PNGs vs the resized uint8 cache, measured in the same run.

``python benchmarks/bench_loader.py -c configs/chestxray14.yaml [--images DIR] [--repeat 8]``
lists every PNG of ``--images`` (default: the bundled NIH chest X-rays, 1024x1024) ``--repeat`` times,
fills a temporary cache with ``tools/prepare_data.py``'s code, then times the training loader
(``data.num_workers`` workers, ``train.batch_size``, the config's train transform) over both.
"""

import dataclasses
import glob
import os
import sys
import tempfile
import time

from chexcam.cli import build_parser, run_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _throughput(samples, cfg):
    from chexcam.data.datasets import ImageDataset, iterate, make_loader

    ds = ImageDataset(samples, cfg, train=True)
    loader, sampler = make_loader(ds, cfg.train.batch_size, True, cfg.seed, cfg.data.num_workers)
    t0, n = time.perf_counter(), 0
    for x, _, _ in iterate(loader, sampler, ds, 0, "error"):
        n += int(x.shape[0])
    return n / (time.perf_counter() - t0)


def main(cfg, args):
    from chexcam.data.datasets import build_split, prepare_cache

    files = sorted(glob.glob(os.path.join(args.images, "*.png")))
    if not files:
        print(f"no PNGs in {args.images}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = os.path.join(tmp, "bench.csv")
        with open(csv_path, "w") as fh:
            fh.write(",".join(["path"] + list(cfg.data.labels)) + ",split\n")
            for _ in range(args.repeat):
                for f in files:
                    fh.write(",".join([os.path.abspath(f)] + ["0"] * len(cfg.data.labels)) + ",train\n")
        data = dataclasses.replace(cfg.data, dataset="csv", csv=csv_path, path_column="path", cache_dir=None)
        raw_cfg = dataclasses.replace(cfg, data=data)
        cache_cfg = dataclasses.replace(cfg, data=dataclasses.replace(data, cache_dir=os.path.join(tmp, "cache")))
        samples = build_split(raw_cfg, "train")
        t0 = time.perf_counter()
        prepare_cache(cache_cfg, splits=("train",))
        prep = time.perf_counter() - t0
        raw = _throughput(samples, raw_cfg)
        cached = _throughput(samples, cache_cfg)
    print(f"{len(samples)} images ({len(files)} files x {args.repeat}), {cfg.data.num_workers} worker(s), "
          f"batch {cfg.train.batch_size}, train transform {cfg.data.resize_mode} {cfg.data.resize} -> {cfg.data.crop}")
    print(f"raw PNG : {raw:8.1f} images/s")
    print(f"cache   : {cached:8.1f} images/s  ({cached / raw:.1f}x; one-time cache build {prep:.1f} s "
          f"for {len(files)} files)")
    return 0


if __name__ == "__main__":
    parser = build_parser(__doc__)
    parser.add_argument("--images", default=os.path.join(ROOT, "data", "chestxray14_sample", "images"),
                        help="folder of PNGs to read (default: the bundled chest X-rays)")
    parser.add_argument("--repeat", type=int, default=8, help="times each file is listed (default 8)")
    sys.exit(run_tool(main, __doc__, parser=parser))
