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
    # --- CAM mosaic step (CAM rendering issue): render held-out cells with $out/best.pdparams here ---
    echo "demo finished in $(( $(date +%s) - start )) s. Outputs in $out/:"
    echo "  best.pdparams, last.pdparams  checkpoints (weights + resolved config)"
    echo "  report.md, metrics.json       held-out metrics; roc.png, confusion.png plots"
    echo "  history.jsonl, train.log      per-epoch validation metrics and the training log"
    ;;
  test)
    exec "$py" -m pytest -q "$@"
    ;;
  *)
    echo "usage: bash quickstart.sh demo|test [extra args]" >&2
    exit 2
    ;;
esac
