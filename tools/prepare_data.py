"""One-time cache of resized uint8 images the loader then reads instead of the originals.

``python tools/prepare_data.py -c configs/chestxray14.yaml -o data.root=NIH -o data.cache_dir=cache``;
train with the same ``data.cache_dir``. Existing entries are kept, so an interrupted run just continues.
"""

import sys

from chexcam.cli import run_tool


def main(cfg, args):
    from chexcam.data.cache import cache_folder
    from chexcam.data.datasets import prepare_cache

    counts = prepare_cache(cfg)
    print(f"cache {cache_folder(cfg)}: {counts['written']} written, {counts['existing']} already there, "
          f"{counts['skipped']} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, __doc__))
