"""Build the HTML viewer (index.html) of an infer_cam.py output folder, also one written before the viewer existed.

Example: -c configs/malaria.yaml -o output_dir=output/malaria   (the folder output_dir/infer.subdir)
         -c configs/malaria.yaml output/old_run/cam other/cam      (folders named explicitly)
Reads the folder's JSON records, images and maps (or mosaics); the page opens from disk, no server needed.
"""

import os
import sys

from chexcam.cli import build_parser, positive_int, run_tool


def main(cfg, args):
    from chexcam.viewer import write_viewer

    for folder in args.folders or [os.path.join(cfg.output_dir, cfg.infer.subdir)]:
        print(write_viewer(folder, title=args.title, page_size=args.page_size, progress=not args.quiet))
    return 0


def parser():
    p = build_parser(__doc__)
    p.add_argument("folders", nargs="*", help="output folder(s) of tools/infer_cam.py (default: output_dir/infer.subdir)")
    p.add_argument("--title", default=None, help="page title (default: from the folder)")
    p.add_argument("--page-size", type=positive_int, default=48, help="cards per page")
    return p


if __name__ == "__main__":
    sys.exit(run_tool(main, __doc__, parser=parser()))
