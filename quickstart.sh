#!/usr/bin/env bash
# One-stop set-up and run: `bash quickstart.sh demo` (the main job) or `bash quickstart.sh test`.
# Creates .venv (unless you are already inside a virtualenv/conda env, or CHEXCAM_VENV names one),
# installs chexcam with its test extras, and installs the CPU build of paddlepaddle 3.x only when
# `import paddle` fails -- an existing paddlepaddle-gpu is never replaced.
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-demo}"
shift || true

if [[ -n "${CHEXCAM_VENV:-}" ]]; then
  venv="$CHEXCAM_VENV"
elif [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" ]]; then
  venv=""
else
  venv=".venv"
fi
if [[ -n "$venv" ]]; then
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  py="$venv/bin/python"
else
  py="$(command -v python)"
fi

stamp="$("$py" -c 'import sys; print(sys.prefix)')/.chexcam-installed"
want="$(cat setup.cfg pyproject.toml | "$py" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
if ! "$py" -c "import paddle" >/dev/null 2>&1; then
  echo "paddle not importable: installing the CPU build paddlepaddle>=3,<4"
  "$py" -m pip install -q "paddlepaddle>=3,<4"
fi

case "$what" in
  demo)
    # Main job: train the malaria-cell model on the 300 bundled real cells (data/malaria), evaluate it on
    # the held-out patients, print where everything is. Extra args go to both tools (e.g. -o train.epochs=5).
    # A finished run in output/malaria is resumed (nothing to do) rather than retrained; delete it to start over.
    out=output/malaria
    start=$(date +%s)
    "$py" tools/train.py -c configs/malaria.yaml -o output_dir="$out" "$@"
    "$py" tools/eval.py -c configs/malaria.yaml -o output_dir="$out" "$@"
    # CAMs of the held-out cells with the best checkpoint: per-cell mosaics + JSON records (probability,
    # decision, peak boxes in the cell's own pixels), and a contact sheet of 16 parasitized cells
    # (original / heatmap / peak boxes, the three columns of the malaria localization article).
    "$py" tools/infer_cam.py -c configs/malaria.yaml -o output_dir="$out" -o model.weights="$out/best.pdparams" \
      -o infer.input=split:test "$@"
    "$py" tools/render_mosaic.py -c configs/malaria.yaml -o output_dir="$out" -o model.weights="$out/best.pdparams" \
      -o infer.input=split:test --classes Parasitized --truth positive --limit 16 "$@"
    # the HTML viewer of the held-out cells (redoes nothing that infer_cam.py already built)
    "$py" tools/make_viewer.py -c configs/malaria.yaml -o output_dir="$out" -q >/dev/null
    # which explanation to trust: CAM, Grad-CAM, Grad-CAM++ and LIME on the held-out parasitized cells
    # (faithfulness, stain pointing game, ms per image) -> compare/report.md
    "$py" tools/compare_methods.py -c configs/malaria.yaml -o output_dir="$out" -o model.weights="$out/best.pdparams" \
      -q "$@"
    echo "demo finished in $(( $(date +%s) - start )) s. Outputs in $out/:"
    echo "  best.pdparams, last.pdparams  checkpoints (weights + resolved config)"
    echo "  report.html, report.md        held-out metrics with the plots (open report.html in a browser)"
    echo "  metrics.json                  the same numbers, ECE per class included"
    echo "  roc.png, confusion.png, reliability.png, history.png   ROC, confusion matrix, calibration, training curves"
    echo "  history.jsonl, train.log      per-epoch validation metrics and the training log"
    echo "  cam/*_cam.png, cam/*.json     CAM mosaic and record per held-out cell"
    echo "  cam/contact_sheet.png         16 held-out parasitized cells: original / CAM / peak boxes"
    echo "  compare/report.md             CAM vs Grad-CAM vs Grad-CAM++ vs LIME: faithfulness, stain pointing, speed"
    echo "Viewer of the held-out cells (open in a browser, no server needed):"
    echo "  $(cd "$out/cam" && pwd)/index.html"
    ;;
  test)
    # two worker processes (pytest-xdist): most tests wait on a child process, an export or a file, so two
    # share 2 cores well; -n 0 runs them in this one process
    exec "$py" -m pytest -q -n 2 "$@"
    ;;
  *)
    echo "usage: bash quickstart.sh demo|test [extra args]" >&2
    exit 2
    ;;
esac
