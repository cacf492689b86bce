"""Contact sheet of many images x chosen classes (original / heatmap / boxes), from a config or saved outputs.

Example (16 held-out parasitized cells of a trained malaria model):
  python tools/render_mosaic.py -c configs/malaria.yaml -o model.weights=output/malaria/best.pdparams \
      -o infer.input=split:test --classes Parasitized --truth positive --limit 16
"""

import sys

from chexcam.cli import build_parser, positive_int, run_tool


def main(cfg, args):
    from chexcam.engine import sheets

    classes = [c for c in args.classes.split(",") if c] if args.classes else None
    out = sheets.render_sheet(cfg, classes=classes, limit=args.limit, truth=args.truth, source=args.source,
                             out=args.out, tile=args.tile, wrap=args.wrap)
    print(f"contact sheet of {out['images']} images x {', '.join(out['classes'])}: {out['path']}")
    return 0


if __name__ == "__main__":
    p = build_parser(__doc__.splitlines()[0])
    p.add_argument("--classes", help="comma-separated label names (default: all classes)")
    p.add_argument("--truth", choices=["any", "positive", "negative"], default="any",
                   help="keep images whose ground truth for the first class is this (needs infer.input=split:NAME)")
    p.add_argument("--limit", type=positive_int, default=16, help="number of images (rows)")
    p.add_argument("--source", help="folder of saved infer_cam.py outputs (JSON + _maps.npz) instead of the model")
    p.add_argument("--out", help="PNG path (default: output_dir/infer.subdir/contact_sheet.png)")
    p.add_argument("--tile", type=positive_int, default=128, help="px per tile")
    p.add_argument("--wrap", type=positive_int, default=8, help="rows per block; more rows continue to the right")
    sys.exit(run_tool(main, __doc__, parser=p))
