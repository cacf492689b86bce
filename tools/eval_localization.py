"""Localization benchmark against NIH's BBox_List_2017.csv in the layout of Wang et al. 2017 Table 4.

Example: -c configs/chestxray14.yaml -o model.weights=W.pdparams -o localization.bbox_csv=BBox_List_2017.csv
         -o localization.images=FOLDER [-o localization.train_list=chexnet_split/train_list.txt]
"""

import sys

from chexcam.cli import run_tool


def main(cfg, args):
    from chexcam.engine import localization

    result = localization.eval_localization(cfg)
    print(result["report"])
    print(f"report and results.json in {result['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, __doc__))
