"""LIME for all classes of one image, 1000 samples: chexcam vs the ``lime`` package, in one run (a table, never a
timed test).

    python benchmarks/bench_lime.py [-c configs/malaria.yaml] [--weights PATH] [--samples 1000] [--repeats 3]
        [--segmentation quickshift,slic]

Rows (seconds per image, median of ``--repeats`` interleaved rounds; random weights unless ``--weights``), for
each segmentation (quickshift with LIME's defaults; SLIC with ``--slic-segments`` superpixels):
  chexcam.Explainer(method="lime"): forward passes on the Paddle Inference predictor, 50 images per run
  chexcam.explain(method="lime"): the same algorithm on the dynamic graph
  the Explainer with precision="bf16" (opt-in, lossy; only on a CPU with AVX512-BF16/AMX)
  lime's LimeImageExplainer.explain_instance, ``classifier_fn`` on the model's dynamic graph as a Paddle user
  writes it (NHWC -> NCHW, ``paddle.no_grad``, sigmoid), at lime's default ``batch_size=10`` and at 50.
Every row explains every class of the model (``top_labels = K``) with the same superpixels (cut from the
de-normalized RGB image) and the same hide colour (the image's mean). chexcam forwards each distinct perturbation
once: with quickshift's 5-8 superpixels on a 96 px cell most of the 1000 rows repeat, with SLIC's ~80 none do,
so the SLIC rows measure the engine alone. Also printed: the share of chexcam's time spent in forward passes, the
images forwarded, and the largest difference between chexcam's and lime's superpixel weights when lime draws
the same perturbations (same seed): the two compute the same explanation.
"""

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=os.path.join(ROOT, "configs", "malaria.yaml"))
    parser.add_argument("--weights", default=None, help="a .pdparams checkpoint (default: random weights)")
    parser.add_argument("--image", default=None, help="image to explain (default: the first bundled sample)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="predictor CPU threads (0: all)")
    parser.add_argument("--segmentation", default="quickshift,slic", help="comma-separated: quickshift, slic")
    parser.add_argument("--slic-segments", type=int, default=100, help="SLIC's n_segments")
    args = parser.parse_args(argv)

    import paddle

    import chexcam
    from chexcam.data.io import read_image
    from chexcam.data.transforms import eval_transform

    cfg = chexcam.load_config(args.config, [f"model.weights={args.weights}"] if args.weights else
                              ["model.allow_random=true"])
    paddle.seed(0)
    model = chexcam.build_model(cfg)
    if args.image is None:
        folder = {"malaria": os.path.join(ROOT, "data", "malaria", "cell_images", "Parasitized")}.get(
            cfg.data.dataset, os.path.join(ROOT, "data", "chestxray14_sample", "images"))
        args.image = os.path.join(folder, sorted(f for f in os.listdir(folder) if f.endswith(".png"))[0])
    x = eval_transform(cfg)(read_image(args.image))[0][None].astype(np.float32)
    k = cfg.model.num_classes
    print(f"{cfg.model.name}, {x.shape[2]} px, {k} classes, {args.samples} samples, {args.image}", file=sys.stderr)
    for name in [n for n in args.segmentation.split(",") if n]:
        seg_opts = {"segmentation": name, "n_segments": args.slic_segments} if name == "slic" else {"segmentation": name}
        run_rows(args, cfg, model, x, k, seg_opts)
    return 0


def run_rows(args, cfg, model, x, k, seg_opts):
    """The four rows for one segmentation, printed as a table."""
    import paddle
    import paddle.nn.functional as F
    from lime import lime_image

    import chexcam
    from chexcam.cam import lime as L
    from chexcam.serving import cpu_has_bf16

    opts = {"num_samples": args.samples, "seed": 0, "mean": tuple(cfg.data.mean), "std": tuple(cfg.data.std),
            **seg_opts}
    seg = L.segment(L.rgb_image(x[0], cfg.data.mean, cfg.data.std), **{k_: v for k_, v in seg_opts.items()})
    ex = chexcam.Explainer(model, method="lime", threads=args.threads, **opts)
    bf16 = chexcam.Explainer(model, method="lime", threads=args.threads, precision="bf16", **opts) \
        if cpu_has_bf16() else None
    shares, forwarded = [], []

    def ours_fast():
        res = ex(x, normalize=False, upsample=False)
        shares.append(res.timing["forward"] / res.timing["total"])
        forwarded.append(res.timing["images"])
        return res

    def ours_dynamic():
        return chexcam.explain(model, x, method="lime", normalize=False, upsample=False, **opts)

    def classifier_fn(images):
        """What a Paddle user passes to lime: NHWC batch -> sigmoid probabilities."""
        model.eval()
        with paddle.no_grad():
            batch = paddle.to_tensor(np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2))
            return F.sigmoid(model(batch)).numpy()

    def lime_package(batch_size):
        def run():
            explainer = lime_image.LimeImageExplainer(kernel_width=0.25, random_state=0)
            return explainer.explain_instance(
                x[0].transpose(1, 2, 0), classifier_fn, top_labels=k, hide_color=x[0].mean(axis=(1, 2)),
                num_samples=args.samples, batch_size=batch_size, random_seed=0,
                segmentation_fn=lambda img: seg)
        return run

    import lime.lime_image as li

    li.tqdm = lambda it, **kw: it  # lime draws a progress bar per call; keep the table readable
    lime_default = "lime package, dynamic-graph classifier_fn, batch_size=10 (lime's default)"
    cases = {
        "chexcam Explainer (predictor), batch 50": ours_fast,
        "chexcam.explain (dynamic graph), batch 50": ours_dynamic,
        **({"chexcam Explainer (predictor, precision=bf16, opt-in), batch 50":
            lambda: bf16(x, normalize=False, upsample=False)} if bf16 is not None else {}),
        lime_default: lime_package(10),
        "lime package, dynamic-graph classifier_fn, batch_size=50": lime_package(50),
    }
    results = {name: fn() for name, fn in cases.items()}  # warm-up, and the results compared below
    times = {name: [] for name in cases}
    for r in range(args.repeats):
        print(f"\rround {r + 1}/{args.repeats}", end="", file=sys.stderr, flush=True)
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(file=sys.stderr)
    med = {name: statistics.median(t) for name, t in times.items()}
    ref = med[lime_default]
    width = max(len(n) for n in med)
    desc = ", ".join(f"{k_}={v}" for k_, v in seg_opts.items())
    print(f"\n{desc}: {seg.max() + 1} superpixels; chexcam forwarded {forwarded[-1]} distinct images of "
          f"{args.samples}")
    print(f"{'row'.ljust(width)}  s/image  speed-up vs lime default")
    for name, t in med.items():
        print(f"{name.ljust(width)}  {t:7.2f}  {ref / t:5.2f}x")
    print(f"share of chexcam's Explainer time in forward passes: {100 * statistics.median(shares[1:] or shares):.0f}%")
    fast, pkg = results["chexcam Explainer (predictor), batch 50"], results[lime_default]
    diff = 0.0
    for c in range(k):
        w = np.zeros(int(fast.segments.max()) + 1)
        for s_, v in pkg.local_exp[c]:
            w[s_] = v
        diff = max(diff, float(np.abs(fast.weights[0][c] - w).max()))
    print(f"largest |chexcam weight - lime weight| over {k} classes, same perturbations: {diff:.1e}")


if __name__ == "__main__":
    sys.exit(main())
