"""Convert a CheXNet / DenseNet checkpoint (PyTorch release, torchvision, Paddle-CheXNet) to chexcam .pdparams.

Example: -c configs/chestxray14.yaml --src model.pth.tar --out pretrained/chexnet_densenet121.pdparams
Writes OUT and a JSON report beside it (source sha256, key mapping, shapes); nothing on any error.
Needs no torch: PyTorch files (both torch.save formats) are read by chexcam.serialization, which refuses
any pickle that names more than tensors, arrays and containers.
"""

import sys

from chexcam.cli import build_parser, run_tool
from chexcam.convert import FORMATS


def main(cfg, args):
    from chexcam.convert import convert_file

    report = convert_file(args.src, args.out, fmt=args.format, model_name=cfg.model.name,
                          num_classes=cfg.model.num_classes, output_stride=cfg.model.output_stride)
    print(f"{report['source_format']} -> {report['output']} ({report['tensors']} tensors, "
          f"{report['num_classes']} classes); report {report['report']}")
    print(f"source sha256 {report['source_sha256']}")
    return 0


if __name__ == "__main__":
    parser = build_parser(__doc__)
    parser.add_argument("--src", required=True, help="checkpoint to convert (.pth, .pth.tar, .pt, .pdparams)")
    parser.add_argument("--out", required=True, help="chexcam .pdparams to write (report: OUT stem + .convert.json)")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="source layout (default: auto-detect)")
    sys.exit(run_tool(main, __doc__, parser=parser))
