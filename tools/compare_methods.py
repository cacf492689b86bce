"""Which explanation to trust: CAM methods and LIME (or every registered method) on one model and split, one table.

Deletion/insertion AUC, Average Drop, Increase in Confidence, pointing game and T(IoBB) where boxes exist, the
stain pointing game for malaria cells, ms per image; writes output_dir/compare/{report.md,results.json,curves.png}.

Example (the malaria demo model on its held-out patients):
  python tools/compare_methods.py -c configs/malaria.yaml -o model.weights=output/malaria/best.pdparams
  python tools/compare_methods.py -c configs/malaria.yaml --methods cam,lime --lime segmentation=slic
  python tools/compare_methods.py -c configs/malaria.yaml --methods all --limit 8
"""

import sys

import yaml

from chexcam.cli import build_parser, positive_int, run_tool
from chexcam.errors import ConfigError


def lime_options(pairs):
    """``["num_samples=500", "segmentation=slic"]`` -> a dict (values parsed as YAML, never eval)."""
    out = {}
    for text in pairs:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise ConfigError(f"malformed --lime {text!r}: expected KEY=VALUE, e.g. --lime num_samples=500")
        value = yaml.safe_load(raw)
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def main(cfg, args):
    options = lime_options(args.lime)
    from chexcam.cam import list_cam_methods
    from chexcam.engine import compare

    methods = list_cam_methods() if args.methods.strip() == "all" else [m for m in args.methods.split(",") if m]
    result = compare.compare_methods(cfg, methods, split=args.split, limit=args.limit, lime_options=options)
    print(result["report"])
    print(f"report.md, results.json and curves.png in {result['output_dir']}")
    return 0


if __name__ == "__main__":
    p = build_parser(__doc__.splitlines()[0])
    p.add_argument("--methods", default="cam,gradcam,gradcampp,lime", help="comma-separated methods to compare, or 'all' (every registered method)")
    p.add_argument("--split", choices=["train", "val", "test"], default=None, help="split (default: eval.split)")
    p.add_argument("--limit", type=positive_int, default=None, help="first N images with a positive label")
    p.add_argument("--lime", action="append", default=[], metavar="KEY=VALUE",
                   help="a LIME option, e.g. --lime num_samples=500 --lime segmentation=slic (repeatable)")
    sys.exit(run_tool(main, __doc__, parser=p))
