"""CPU throughput of chexcam against its PyTorch peers, in one run: prints a table (never a timed test).

    python benchmarks/bench_cpu.py [--batch 16] [--size 224] [--repeats 7] [--warmup 2] [--threads N]

Rows (images/s, median of ``--repeats`` rounds that time one batch of every row in turn, random weights):
  chexcam forward (dynamic graph) | chexcam.explain, 14 CAMs upsampled + normalized (the reference, dynamic
  graph) | chexcam.Explainer (predictor engine), the same call | the exported model on Paddle Inference
  (oneDNN): forward only, forward + 14 raw CAMs, bf16 | torchvision DenseNet121 fp32 and bf16 autocast |
  torchcam CAM for 14 classes upsampled to the input size (when torch/torchvision/torchcam exist).
Also: ratios to the PyTorch rows, the CAM overhead over the forward pass, and the fraction of this
machine's fp32 matrix-multiply bound (sgemm GFLOP/s measured here / DenseNet121's FLOPs per image).
The machine should be otherwise idle; the median makes the figures robust to short interruptions.
"""

import argparse
import atexit
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def timeit(fn, warmup, repeats):
    """Median seconds per call after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_round_robin(cases, warmup, repeats):
    """Median seconds per call of every case, timed in rounds (one call of each case per round).

    Interleaving spreads any background load evenly over the rows, so their ratios stay meaningful on a
    busy machine; the median drops the rounds a burst of load hit.
    """
    times = {name: [] for name in cases}
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    for r in range(repeats):
        print(f"\rround {r + 1}/{repeats}", end="", file=sys.stderr, flush=True)
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(file=sys.stderr)
    return {name: statistics.median(t) for name, t in times.items()}


def sgemm_gflops(threads, n=2048, repeats=5):
    """Best of numpy and paddle for an n x n fp32 matmul (2 n^3 FLOPs)."""
    import paddle

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    best = 0.0
    for name, fn in (("numpy", lambda: a @ a),
                     ("paddle", lambda pa=paddle.to_tensor(a): paddle.matmul(pa, pa).numpy())):
        t = timeit(fn, 2, repeats)
        best = max(best, 2 * n ** 3 / t / 1e9)
    return best


def densenet_gflop(size):
    """FLOPs (2 x multiply-adds of every conv and linear layer) of one DenseNet121 image at ``size`` px."""
    import paddle

    net = paddle.vision.models.densenet121(num_classes=14)
    macs = []

    def count(layer, inputs, output):
        if isinstance(layer, paddle.nn.Conv2D):
            k = int(np.prod(layer.weight.shape[1:]))  # in_channels / groups * kh * kw
            macs.append(int(np.prod(output.shape)) * k)
        elif isinstance(layer, paddle.nn.Linear):
            macs.append(int(np.prod(output.shape)) * int(layer.weight.shape[0]))

    handles = [m.register_forward_post_hook(count) for m in net.sublayers()
               if isinstance(m, (paddle.nn.Conv2D, paddle.nn.Linear))]
    with paddle.no_grad():
        net.eval()
        net(paddle.zeros([1, 3, size, size]))
    for h in handles:
        h.remove()
    return 2 * sum(macs) / 1e9


def paddle_rows(args, x, rows):
    import paddle

    import chexcam
    from chexcam.serving import Predictor, export_model, predictor_config

    paddle.set_device("cpu")
    cfg = chexcam.load_config(None, ["model.allow_random=true"])
    paddle.seed(0)
    model = chexcam.build_model(cfg)
    xt = paddle.to_tensor(x)

    def forward():
        with paddle.no_grad():
            model(xt).numpy()

    t0 = time.perf_counter()
    ex = chexcam.Explainer(model, threads=args.threads)
    rows["_explainer_build"] = time.perf_counter() - t0
    rows["chexcam forward (dynamic graph)"] = forward
    rows["chexcam.explain 14 CAMs up+norm (dynamic)"] = lambda: chexcam.explain(model, x)
    rows["chexcam.Explainer 14 CAMs up+norm"] = lambda: ex(x)

    tmp = tempfile.mkdtemp(prefix="chexcam-bench-")
    atexit.register(shutil.rmtree, tmp, True)
    export_model(model, os.path.join(tmp, "cam"), output="probs")
    fwd_dir = os.path.join(tmp, "fwd")
    # to_static converts the Layer it is given in place: trace a copy, the rows above keep the eager model
    static = paddle.jit.to_static(copy.deepcopy(model), input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32", "x")],
                                  full_graph=True)
    paddle.jit.save(static, os.path.join(fwd_dir, "model"))
    from paddle import inference as pinf

    pred = pinf.create_predictor(predictor_config(fwd_dir, threads=args.threads))  # logits only
    inp = pred.get_input_handle(pred.get_input_names()[0])
    out = pred.get_output_handle(pred.get_output_names()[0])

    def pi_forward():
        inp.reshape(list(x.shape))
        inp.copy_from_cpu(x)
        pred.run()
        out.copy_to_cpu()

    pi = Predictor(os.path.join(tmp, "cam"), threads=args.threads)
    rows["Paddle Inference forward (oneDNN fp32)"] = pi_forward
    rows["Paddle Inference forward + 14 raw CAMs"] = lambda: pi(x)
    ref = ex(x)
    try:
        bf = chexcam.Explainer(model, precision="bf16", threads=args.threads)
        rows["chexcam.Explainer bf16 14 CAMs up+norm"] = lambda: bf(x)
        got = bf(x)
        raw_ref, raw_bf = ex(x, normalize=False, upsample=False)[1], bf(x, normalize=False, upsample=False)[1]
        rows["_bf16_err"] = (float(np.abs(got[0] - ref[0]).max()),
                             float(np.abs(raw_bf - raw_ref).max() / np.abs(raw_ref).max()))
    except chexcam.ChexcamError as exc:  # no bf16 support on this CPU / build
        rows["_bf16_err"] = f"bf16 row skipped: {exc}"


def torch_rows(args, x, rows):
    try:
        import torch
        import torchvision
    except ImportError:
        rows["_torch"] = "torch/torchvision not installed: PyTorch rows skipped (pip install -e '.[parity]')"
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = torchvision.models.densenet121(weights=None, num_classes=14).eval()
    xt = torch.from_numpy(x)

    def fwd():
        with torch.inference_mode():
            net(xt)

    def fwd_bf16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            net(xt)

    rows["torchvision forward fp32"] = fwd
    rows["torchvision forward bf16 autocast"] = fwd_bf16
    try:
        from torchcam.methods import CAM
    except ImportError:
        rows["_torchcam"] = "torchcam not installed: torchcam row skipped (pip install --no-deps torchcam)"
        return
    size = x.shape[2:]

    def torchcam_14():
        with CAM(net, target_layer="features", fc_layer="classifier", input_shape=tuple(x.shape[1:])) as extractor:
            with torch.inference_mode():
                scores = net(xt)
                torch.sigmoid(scores).numpy()
                maps = torch.stack([extractor(class_idx=c, scores=scores)[0] for c in range(14)], dim=1)
                torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False).numpy()

    rows["torchcam CAM 14 classes up+norm"] = torchcam_14


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="images per batch (default 16)")
    parser.add_argument("--size", type=int, default=224, help="input side in px (default 224)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (one batch per row each); medians")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for every framework (0: all)")
    args = parser.parse_args()
    from chexcam.serving import cpu_count

    args.threads = args.threads or cpu_count()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    cases = {}
    paddle_rows(args, x, cases)
    torch_rows(args, x, cases)
    notes = {k: cases.pop(k) for k in [k for k in cases if k.startswith("_")]}
    rows = {name: args.batch / t for name, t in measure_round_robin(cases, args.warmup, args.repeats).items()}
    gflops = sgemm_gflops(args.threads)
    gflop = densenet_gflop(args.size)
    bound = gflops / gflop
    tv = rows.get("torchvision forward fp32")
    tc = rows.get("torchcam CAM 14 classes up+norm")
    print(f"\nbatch {args.batch}, {args.size} px, {args.threads} threads; sgemm {gflops:.0f} GFLOP/s; "
          f"DenseNet121 {gflop:.2f} GFLOP/image -> fp32 bound {bound:.1f} img/s\n")
    print(f"{'row':44s} {'img/s':>7s} {'vs tv fp32':>10s} {'vs torchcam':>11s} {'of bound':>8s}")
    for name, ips in rows.items():
        r1 = f"{ips / tv:.2f}x" if tv else "-"
        r2 = f"{ips / tc:.2f}x" if tc else "-"
        print(f"{name:44s} {ips:7.1f} {r1:>10s} {r2:>11s} {ips / bound:8.0%}")
    fwd, cam = rows.get("Paddle Inference forward (oneDNN fp32)"), rows.get("Paddle Inference forward + 14 raw CAMs")
    print()
    if fwd and cam:
        print(f"CAM overhead over the forward pass (Paddle Inference): {100 * (fwd / cam - 1):+.1f}% time")
    dyn, exp = rows.get("chexcam forward (dynamic graph)"), rows.get("chexcam.explain 14 CAMs up+norm (dynamic)")
    exr = rows.get("chexcam.Explainer 14 CAMs up+norm")
    if dyn and exp:
        print(f"explain (dynamic graph) vs dynamic-graph forward alone: {exp / dyn:.2f}x")
    if exp and exr:
        print(f"Explainer vs explain: {exr / exp:.2f}x (Explainer built once in {notes['_explainer_build']:.1f} s: "
              "export + predictor + check against the dynamic graph)")
    if isinstance(notes.get("_bf16_err"), tuple):
        p, m = notes["_bf16_err"]
        print(f"bf16 accuracy loss vs fp32: max |prob diff| {p:.1e}, max relative CAM diff {m:.1e}")
    for key, note in notes.items():
        if isinstance(note, str):
            print(note)
    if tc and exr:
        print(f"targets: Explainer >= 1.3x torchcam: {exr / tc:.2f}x (explain, dynamic: {exp / tc:.2f}x); "
              f"PI forward + 14 CAMs >= 30 img/s: {cam:.1f}; CAM overhead <= 5%: {100 * (fwd / cam - 1):+.1f}%")

if __name__ == "__main__":
    main()
