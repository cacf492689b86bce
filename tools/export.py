"""Export the configured model + CAMs of all classes as one static graph for Paddle Inference (and ONNX).

Example: -c configs/chestxray14.yaml -o model.weights=pretrained/chexnet.pdparams -o export.dir=serving/chexnet
Writes model.json, model.pdiparams and chexcam_export.json (labels, preprocessing, weights sha256);
outputs of the graph: probabilities [B, K] and raw CAMs [B, K, H/32, W/32]. ONNX with -o export.onnx=true.
"""

import sys

from chexcam.cli import run_tool


def main(cfg, args):
    from chexcam.engine.export import export_from_config

    summary = export_from_config(cfg)
    print(f"exported to {summary['dir']} (Paddle Inference vs dynamic graph: max probability difference "
          f"{summary['max_prob_diff']:.1e})")
    if "onnx" in summary:
        print(f"ONNX: {summary['onnx']} (max difference to Paddle {summary['onnx_max_diff']:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, __doc__))
