"""Web app: upload a chest X-ray, get the probabilities, the class map of a finding (by any registered method)
with its boxes, the JSON.

Example: python tools/app.py -c configs/chestxray14.yaml -o model.weights=chexnet.pdparams [--port 7860]
Listens on 127.0.0.1 unless --host says otherwise (e.g. --host 0.0.0.0 inside a container). Needs the
[app] extra (Gradio): pip install -e '.[app]'.
"""

import sys

from chexcam.cli import build_parser, positive_float, run_tool


def main(cfg, args):
    from chexcam.engine import app

    app.launch(cfg, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)
    return 0


if __name__ == "__main__":
    parser = build_parser(__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or $GRADIO_SERVER_PORT)")
    parser.add_argument("--max-upload-mb", type=positive_float, default=20.0,
                        help="largest upload accepted, in MB (default 20)")
    sys.exit(run_tool(main, __doc__, parser=parser))
