"""End-to-end speed of the per-image tools on N real 1024-px chest X-rays, against the model alone.

One run, the same N >= 100 NIH PNGs for every row (the 3 bundled in ``data/chestxray14_sample`` plus
``../shared/data/chestxray14/images`` when present, repeated under distinct names), the ChestX-ray14 config
(DenseNet121, 14 classes, batch 8) with seeded random weights:

  ceiling        the Explainer (Paddle Inference, fp32) on batches preprocessed beforehand: the model alone
  infer_cam      ``tools/infer_cam.py`` with the default outputs (3x5 mosaic PNG + JSON record per image)
  JSON only      ``tools/infer_cam.py -o infer.mosaic=false``
  eval.py        ``tools/eval.py`` on a CSV dataset of the same images (``data.dataset=csv``)
  peer           a PyTorch user's pipeline: torchvision DenseNet121 + torchcam ``CAM`` for the 14 classes,
                 cv2 overlays of the same 3x5 mosaic at full size, PNG + JSON (when torch and torchcam exist)
  bf16           the ceiling and infer_cam with ``-o export.precision=bf16`` (CPUs with AMX/AVX512-BF16),
                 with the accuracy cost against fp32 on the same batches
  GPU            the ceiling and infer_cam on a GPU (with and without TensorRT) where paddle sees one;
                 otherwise the rows say that there is none

Each row runs in its own process. images/s are after start-up (the tools time their streaming part and
report it: ``summary.json`` of infer_cam, the ``predicted ... images/s`` line of eval.py); peak RSS is the
process's own (``getrusage`` of the child). The fp32 ceiling is measured before and after every tool row and
each row's ratio is to the mean of its two neighbours (a shared machine's speed drifts within minutes); run
it twice and compare.

    python benchmarks/bench_e2e.py [-n 120] [--skip-peer] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHEST = os.path.join(ROOT, "configs", "chestxray14.yaml")
SOURCES = [os.path.join(ROOT, "data", "chestxray14_sample", "images"),
           os.path.join(ROOT, "..", "shared", "data", "chestxray14", "images")]
META = os.path.join(ROOT, "..", "shared", "data", "chestxray14", "metadata", "Data_Entry_2017.csv.gz")

#: runs a command as its child and prints the child's peak RSS (kB) last
CHILD = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


# ---------------------------------------------------------------------------------------------
# inputs


def make_inputs(folder: str, n: int) -> list:
    """``n`` distinct files (hard links, or copies across file systems) of the real 1024-px PNGs in turn."""
    import cv2

    sources = []
    for d in SOURCES:
        for p in sorted(glob.glob(os.path.join(d, "*.png"))):
            if os.path.basename(p) not in {os.path.basename(s) for s in sources}:
                img = cv2.imread(p, cv2.IMREAD_UNCHANGED)
                if img is not None and img.shape[:2] == (1024, 1024):
                    sources.append(p)
    if not sources:
        sys.exit("no 1024-px NIH PNG found in data/chestxray14_sample/images")
    os.makedirs(folder, exist_ok=True)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        dst = os.path.join(folder, f"{i:04d}_{os.path.basename(src)}")
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        out.append(dst)
    return out, len(sources)


def make_csv(path: str, files: list, extra: list) -> None:
    """A CSV dataset of ``files`` (the test split) with their NIH labels; ``extra`` files make the train and
    val splits the csv dataset needs (eval.py predicts val too, for the F1 thresholds: not timed here)."""
    sys.path.insert(0, ROOT)
    from chexcam.labels import CHESTXRAY14_LABELS

    findings = {}
    if os.path.isfile(META):
        from chexcam.data.chestxray14 import read_metadata

        findings = {k: v["findings"] for k, v in read_metadata(META).items()}
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *CHESTXRAY14_LABELS, "split"])
        rows = [(f, "test") for f in files] + [(f, "train" if i % 2 else "val") for i, f in enumerate(extra)]
        for i, (f, split) in enumerate(rows):
            name = os.path.basename(f).split("_", 1)[1]
            have = findings.get(name) or ([CHESTXRAY14_LABELS[i % 14]] if i % 3 == 0 else [])
            w.writerow([f] + [int(lab in have) for lab in CHESTXRAY14_LABELS] + [split])


# ---------------------------------------------------------------------------------------------
# rows that run in this script's own child process


def _batches(files, cfg, batch):
    import numpy as np

    from chexcam.data.io import read_image
    from chexcam.data.transforms import eval_transform

    tf = eval_transform(cfg)
    xs = [tf(read_image(f))[0] for f in files]
    return [np.stack(xs[i:i + batch]) for i in range(0, len(xs), batch)]


def row_ceiling(args) -> dict:
    """The Explainer alone on preprocessed batches (and, for bf16, its accuracy cost against fp32)."""
    import numpy as np

    import chexcam
    from chexcam.engine.infer import explainer_from_config

    files = sorted(glob.glob(os.path.join(args.folder, "*.png")))
    over = [f"model.weights={args.weights}"]
    if args.gpu:
        over += ["device=gpu"] + (["export.tensorrt=true"] if args.tensorrt else [])
    cfg = chexcam.load_config(CHEST, over + [f"export.precision={args.precision}"])
    batches = _batches(files, cfg, cfg.infer.batch_size)
    model = chexcam.build_model(cfg)
    ex = explainer_from_config(cfg, model)
    ex(batches[0], normalize=False, upsample=False)  # oneDNN compiles the batch shape once
    ex(batches[-1], normalize=False, upsample=False)
    t = time.perf_counter()
    outs = [ex(b, normalize=False, upsample=False) for b in batches]
    rate = len(files) / (time.perf_counter() - t)
    res = {"images_per_s": rate, "engine": ex.engine, "precision": ex.precision}
    if args.precision != "fp32":
        ref = explainer_from_config(chexcam.load_config(CHEST, over + ["export.precision=fp32"]), model)
        dp = dm = 0.0
        for b, (p, m) in zip(batches, outs):
            rp, rm = ref(b, normalize=False, upsample=False)
            dp = max(dp, float(np.abs(p - rp).max()))
            dm = max(dm, float(np.abs(m - rm).max() / max(np.abs(rm).max(), 1e-6)))
        res.update({"max_prob_diff": dp, "max_map_rel_diff": dm})
    return res


def row_peer(args) -> dict:
    """What a PyTorch user writes: torchvision DenseNet121 + torchcam CAM for 14 classes, cv2 overlays drawn
    at full size and shrunk into the same 3x5 mosaic, PNG + JSON per image, one image batch at a time."""
    import cv2
    import numpy as np
    import torch
    import torchvision
    from torchcam.methods import CAM

    sys.path.insert(0, ROOT)
    from chexcam.labels import CHESTXRAY14_LABELS as LABELS

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    net = torchvision.models.densenet121(weights=None, num_classes=14).eval()
    files = sorted(glob.glob(os.path.join(args.folder, "*.png")))
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    os.makedirs(args.out, exist_ok=True)

    def prep(img):
        small = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)[16:240, 16:240]
        return ((small.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)

    def mosaic(img, maps, probs):
        tiles = [cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)]
        for k in range(14):
            m = cv2.resize(maps[k], (224, 224))
            full = np.zeros(img.shape[:2], np.float32)
            full[64:960, 64:960] = cv2.resize(m, (896, 896))
            lo, hi = full.min(), full.max()
            heat = cv2.applyColorMap(np.uint8(255 * (full - lo) / max(hi - lo, 1e-7)), cv2.COLORMAP_JET)
            over = cv2.addWeighted(heat, 0.4, img, 0.6, 0)
            tile = cv2.resize(over, (256, 256), interpolation=cv2.INTER_AREA)
            cv2.putText(tile, f"{LABELS[k]}: {100 * probs[k]:.1f}%", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 255), 1)
            tiles.append(tile)
        tiles.append(np.full_like(tiles[0], 255))
        return np.concatenate([np.concatenate(tiles[r * 5:(r + 1) * 5], axis=1) for r in range(3)], axis=0)

    t = None
    with CAM(net, target_layer="features", fc_layer="classifier", input_shape=(3, 224, 224)) as extractor:
        for i in range(0, len(files), 8):
            if i == 8:  # timed after the first batch, as the tools' rows
                t = time.perf_counter()
            chunk = files[i:i + 8]
            imgs = [cv2.imread(f) for f in chunk]
            x = torch.from_numpy(np.stack([prep(im) for im in imgs]))
            with torch.inference_mode():
                scores = net(x)
                probs = torch.sigmoid(scores).numpy()
                maps = torch.stack([extractor(class_idx=c, scores=scores)[0] for c in range(14)], dim=1).numpy()
            for f, im, p, m in zip(chunk, imgs, probs, maps):
                stem = os.path.splitext(os.path.basename(f))[0]
                cv2.imwrite(os.path.join(args.out, f"{stem}_cam.png"), mosaic(im, m, p))
                peaks = [np.unravel_index(int(np.argmax(mk)), mk.shape) for mk in m]
                with open(os.path.join(args.out, f"{stem}.json"), "w") as fh:
                    json.dump({"image": f, "classes": {lab: {"probability": float(p[k]),
                                                             "peak": [int(c) for c in peaks[k]]}
                                                       for k, lab in enumerate(LABELS)}}, fh, indent=1)
    return {"images_per_s": (len(files) - 8) / (time.perf_counter() - t)}


# ---------------------------------------------------------------------------------------------
# the orchestra


def run_child(cmd, env=None):
    """Run ``cmd`` under the RSS wrapper; ``(returncode, peak RSS MB, wall s, stdout, stderr)``."""
    t = time.time()
    res = subprocess.run([sys.executable, "-c", CHILD, *cmd], capture_output=True, text=True, env=env)
    wall = time.time() - t
    lines = res.stdout.strip().splitlines()
    rss = int(lines[-1]) / 1024.0 if lines and lines[-1].isdigit() else float("nan")
    return res.returncode, rss, wall, "\n".join(lines[:-1]), res.stderr


def own_row(name, args, extra, results, label, blocktime="0"):
    """A row run by this script in a child process. ``KMP_BLOCKTIME`` as the tools set it (0), unless asked."""
    cmd = [__file__, "--row", name, "--folder", args.folder, "--weights", args.weights, *extra]
    code, rss, wall, out, err = run_child([sys.executable, *cmd], env=dict(os.environ, KMP_BLOCKTIME=blocktime))
    if code != 0:
        results.append((label, None, rss, wall, f"failed: {err.strip().splitlines()[-1] if err.strip() else code}"))
        return None
    data = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    results.append((label, data["images_per_s"], rss, wall, ""))
    return data


def tool_row(tool, overrides, args, results, label, out):
    cmd = [sys.executable, os.path.join(ROOT, "tools", tool), "-c", CHEST]
    for o in overrides + [f"output_dir={out}"]:
        cmd += ["-o", o]
    code, rss, wall, stdout, err = run_child(cmd)
    if code != 0:
        results.append((label, None, rss, wall, f"failed: {err.strip().splitlines()[-1] if err.strip() else code}"))
        return None
    if tool == "infer_cam.py":
        summary = json.load(open(os.path.join(out, "cam", "summary.json")))
        rate, note = summary["images_per_s"], f"{summary['images']} images, {summary['workers']} workers, {summary['engine']}"
    else:
        m = re.findall(r"predicted (\d+) images in ([\d.]+) s \(([\d.]+) images/s in steady state, (\w+) engine", err)
        if not m:
            results.append((label, None, rss, wall, "no 'predicted ... images/s' line in eval.py's log"))
            return None
        rate, note = float(m[0][2]), f"{m[0][0]} images, {m[0][3]}"
    results.append((label, rate, rss, wall, note))
    return rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=120, help="images (>= 100 for the issue's figures)")
    p.add_argument("--skip-peer", action="store_true", help="leave out the PyTorch peer row")
    p.add_argument("--skip-bf16", action="store_true", help="leave out the bf16 rows")
    p.add_argument("--keep", help="keep inputs and outputs in this folder")
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tensorrt", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.row:
        import warnings

        warnings.filterwarnings("ignore")
        fn = {"ceiling": row_ceiling, "peer": row_peer}[args.row]
        print(json.dumps(fn(args)))
        return 0

    tmp = args.keep or tempfile.mkdtemp(prefix="chexcam-bench-e2e-")
    try:
        return _bench(args, tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _bench(args, tmp) -> int:
    import platform

    args.folder = os.path.join(tmp, "images")
    files, unique = make_inputs(args.folder, args.n)
    csv_path = os.path.join(tmp, "dataset.csv")
    extra, _ = make_inputs(os.path.join(tmp, "train_val"), 8)
    make_csv(csv_path, files, extra)
    args.weights = os.path.join(tmp, "random_densenet121.pdparams")
    import paddle

    import chexcam

    paddle.seed(0)
    paddle.save(chexcam.build_model(chexcam.load_config(CHEST, ["model.allow_random=true"])).state_dict(), args.weights)
    from chexcam.serving import cpu_count, cpu_has_bf16
    from chexcam.utils import has_gpu

    print(f"{len(files)} images (1024x1024 NIH PNGs, {unique} distinct), {cpu_count()} CPUs, {platform.machine()}, "
          f"paddle {paddle.__version__}, batch 8, DenseNet121 random weights (seeded)", flush=True)
    results = []
    base = [f"model.weights={args.weights}", f"infer.input={args.folder}"]
    ceilings = []

    def ceiling(label="ceiling: Explainer on preprocessed batches (fp32)"):
        row = own_row("ceiling", args, [], results, label)
        ceilings.append(row["images_per_s"] if row else None)
        return row

    def between(rate_row):
        """A tool row, with the fp32 ceiling measured right before and right after it (the machine is shared:
        its ratio is to the mean of the two)."""
        before = ceilings[-1]
        rate_row()
        ceiling("ceiling again")
        after = ceilings[-1]
        refs.append((results[-2][0], before, after))

    refs = []
    ceiling()
    between(lambda: tool_row("infer_cam.py", base, args, results, "infer_cam.py, default outputs (mosaic PNG + JSON)",
                             os.path.join(tmp, "out_default")))
    between(lambda: tool_row("infer_cam.py", base + ["infer.mosaic=false"], args, results, "infer_cam.py, JSON only",
                             os.path.join(tmp, "out_json")))
    between(lambda: tool_row("eval.py", [f"model.weights={args.weights}", "data.dataset=csv", f"data.csv={csv_path}",
                                         "eval.split=test", "eval.bootstrap=100"], args, results,
                             "eval.py (CSV dataset of the same images)", os.path.join(tmp, "out_eval")))
    peer = None
    if not args.skip_peer:
        try:
            import torch  # noqa: F401
            import torchcam  # noqa: F401
            import torchvision  # noqa: F401

            between(lambda: own_row("peer", args, ["--out", os.path.join(tmp, "out_peer")], results,
                                    "peer: torchvision DenseNet121 + torchcam CAM, cv2 mosaic, PNG + JSON"))
            peer = results[-2][1]
        except ImportError:
            results.append(("peer: torchvision + torchcam", None, float("nan"), 0.0, "torch/torchcam not installed"))
    own_row("ceiling", args, [], results, "ceiling, OpenMP spinning 200 ms (KMP_BLOCKTIME=200, its default)",
            blocktime="200")
    bf16 = None
    if not args.skip_bf16:
        if cpu_has_bf16():
            bf16 = own_row("ceiling", args, ["--precision", "bf16"], results, "ceiling, bf16 (export.precision=bf16)")
            tool_row("infer_cam.py", base + ["export.precision=bf16"], args, results,
                     "infer_cam.py, default outputs, bf16", os.path.join(tmp, "out_bf16"))
            if bf16:
                refs.append((results[-1][0], bf16["images_per_s"], bf16["images_per_s"]))
        else:
            results.append(("bf16 rows", None, float("nan"), 0.0, "this CPU has no AVX512-BF16/AMX"))
    gpu_rows = []
    if has_gpu():
        for trt in (False, True):
            tag = " + TensorRT" if trt else ""
            own_row("ceiling", args, ["--gpu"] + (["--tensorrt"] if trt else []), gpu_rows, f"GPU ceiling{tag}")
            tool_row("infer_cam.py", base + ["device=gpu", f"export.tensorrt={str(trt).lower()}"], args, gpu_rows,
                     f"GPU infer_cam.py default outputs{tag}", os.path.join(tmp, f"out_gpu{int(trt)}"))

    ref = {label: 0.5 * (a + b) for label, a, b in refs if a and b}
    print(f"\n{'row':66s} {'img/s':>7s} {'of ceiling':>10s} {'peak RSS':>9s} {'wall':>7s}")
    for label, rate, rss, wall, note in results + gpu_rows:
        r = "" if rate is None else f"{rate:7.2f}"
        frac = f"{100 * rate / ref[label]:9.0f}%" if rate and label in ref else ""
        print(f"{label:66s} {r:>7s} {frac:>10s} {rss:7.0f}MB {wall:6.1f}s  {note}")
    if not gpu_rows:
        print(f"{'GPU rows (Paddle Inference, with and without TensorRT)':66s}  no GPU on this machine")
    fp32 = [c for c in ceilings if c]
    if fp32:
        print(f"\nfp32 ceiling measured {len(fp32)} times: {min(fp32):.2f} to {max(fp32):.2f} images/s; each tool row's "
              "'of ceiling' is to the mean of the ceilings measured just before and just after it "
              "(bf16: to the bf16 ceiling)")
    if bf16 and "max_prob_diff" in bf16:
        print(f"bf16 accuracy cost against fp32 on the same batches: probabilities up to "
              f"{bf16['max_prob_diff']:.1e}, raw CAMs up to {100 * bf16['max_map_rel_diff']:.2f}% of the map's range")
    rates = {label: rate for label, rate, *_ in results}
    for label, need in (("infer_cam.py, default outputs (mosaic PNG + JSON)", 0.60),
                        ("infer_cam.py, JSON only", 0.85), ("eval.py (CSV dataset of the same images)", 0.85)):
        got = rates.get(label)
        if got and label in ref:
            verdict = "met" if got >= need * ref[label] else "NOT met"
            print(f"target {label}: >= {100 * need:.0f}% of the ceiling: {100 * got / ref[label]:.0f}% ({verdict})")
    default = rates.get("infer_cam.py, default outputs (mosaic PNG + JSON)")
    if peer and default:
        x = default / peer
        print(f"target infer_cam default outputs >= 2x the peer: {x:.2f}x ({'met' if x >= 2 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
