"""Train a configured model: ``python tools/train.py -c configs/malaria.yaml [-o train.epochs=2]``."""

import sys

from chexcam.cli import run_tool


def main(cfg, args):
    from chexcam.engine import train

    result = train.run(cfg)
    print(f"training finished; checkpoints and logs in {result['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, __doc__))
