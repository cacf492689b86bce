"""Every CAM method, all 14 classes: chexcam beside pytorch-grad-cam and torch-cam on the same weights (a table,
never a timed test).

    python benchmarks/bench_methods.py [--images 8] [--heavy-images 1] [--samples 2] [--methods all] [--repeats 1]

The weights: a torchvision DenseNet121 with random weights and BatchNorm statistics, converted with chexcam's
converter, so the three libraries run one network. The inputs: the bundled NIH X-rays at 224 px. For each
method, seconds per image to explain **all 14 classes**:

* chexcam: one call per batch (the Explainer, whose predictor runs the masked forwards of the Score-CAM family;
  the dynamic graph for the gradient methods, which need it);
* pytorch-grad-cam and torch-cam: one call per class, as their users must (a target, or a class index, per call).

Gradient methods run on ``--images`` images. The forward-heavy methods (Score-CAM, SS-CAM, IS-CAM, Ablation-CAM:
1,024 masked forwards per image and class for the peers) run on ``--heavy-images`` images, their peers on one
class (``--peer-classes``) and multiplied by 14 (each class is an identical, independent call: the figure is marked
``x14``); SS-CAM, IS-CAM and Smooth Grad-CAM++ use ``--samples`` noise draws or steps for all three libraries
(their cost is linear in it). Rows are measured alternately in one run; the ratio is peer time / chexcam time.
Prints the CPU model (``lscpu``) and the date.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRADIENT = ["gradcam", "gradcampp", "xgradcam", "hirescam", "gradcam_elementwise", "layercam", "eigengradcam",
            "smoothgradcampp", "finercam", "shapleycam", "eigencam", "kpcacam", "cam"]
HEAVY = ["scorecam", "sscam", "iscam", "ablationcam"]
#: chexcam method -> (pytorch-grad-cam class, torch-cam class); None where the library has no such method
PEERS = {
    "cam": (None, "CAM"), "gradcam": ("GradCAM", "GradCAM"), "gradcampp": ("GradCAMPlusPlus", "GradCAMpp"),
    "xgradcam": ("XGradCAM", "XGradCAM"), "hirescam": ("HiResCAM", None),
    "gradcam_elementwise": ("GradCAMElementWise", None), "layercam": ("LayerCAM", "LayerCAM"),
    "eigengradcam": ("EigenGradCAM", None), "smoothgradcampp": (None, "SmoothGradCAMpp"), "finercam": ("FinerCAM", None),
    "shapleycam": ("ShapleyCAM", None), "eigencam": ("EigenCAM", None), "kpcacam": ("KPCA_CAM", None),
    "scorecam": ("ScoreCAM", "ScoreCAM"), "sscam": (None, "SSCAM"), "iscam": (None, "ISCAM"),
    "ablationcam": ("AblationCAM", None), "dff": (None, None),
}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build_pair(tmp):
    import torch
    import torchvision

    import chexcam
    from chexcam.convert import convert_file

    torch.manual_seed(0)
    net = torchvision.models.densenet121(weights=None, num_classes=14)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(n, generator=g))
                mod.bias.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
        net.classifier.weight.mul_(20.0)
    torch.save(net.state_dict(), os.path.join(tmp, "tv.pth"))
    convert_file(os.path.join(tmp, "tv.pth"), os.path.join(tmp, "tv.pdparams"))
    cfg = chexcam.load_config(os.path.join(ROOT, "configs", "chestxray14.yaml"),
                              [f"model.weights={os.path.join(tmp, 'tv.pdparams')}"])
    model = chexcam.build_model(cfg)
    net.features.add_module("relu5", torch.nn.ReLU())

    class Hookable(torch.nn.Module):
        def __init__(self, tv):
            super().__init__()
            self.features, self.classifier = tv.features, tv.classifier

        def forward(self, x):
            return self.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    return model, Hookable(net).eval(), cfg


def images(cfg, n):
    import chexcam  # noqa: F401
    from chexcam.data.io import read_image
    from chexcam.data.transforms import eval_transform

    folder = os.path.join(ROOT, "data", "chestxray14_sample", "images")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    tf = eval_transform(cfg)
    xs = [tf(read_image(os.path.join(folder, f)))[0] for f in files]
    while len(xs) < n:
        xs += xs
    return np.stack(xs[:n]).astype(np.float32)


def chexcam_runner(model, method, samples):
    import chexcam

    opts = {"sscam": {"num_samples": samples}, "iscam": {"steps": samples},
            "smoothgradcampp": {"num_samples": samples}}.get(method, {})
    ex = chexcam.Explainer(model, method=method, **opts)

    def run(x):
        ex(x, normalize=False, upsample=False)

    return run, ex.engine


def grad_cam_runner(net, method, samples, batch):
    import pytorch_grad_cam
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, PEERS[method][0])
    layer = [net.features.relu5]
    if method == "finercam":
        cam = cls(net, layer, base_method=pytorch_grad_cam.GradCAM)
    elif method in ("scorecam", "ablationcam"):
        cam = cls(model=net, target_layers=layer)
        cam.batch_size = batch
    else:
        cam = cls(model=net, target_layers=layer)

    def run(x, classes):
        xt = torch.from_numpy(x)
        for c in classes:
            if method == "finercam":
                cam(xt, target_idx=c)
            else:
                cam(input_tensor=xt, targets=[ClassifierOutputTarget(c)] * len(x))

    return run


def torch_cam_runner(net, method, samples, batch):
    import torch
    import torchcam.methods as tcm

    name = PEERS[method][1]
    kw = {"target_layer": "features.relu5", "input_shape": (3, 224, 224)}
    if name in ("ScoreCAM", "SSCAM", "ISCAM"):
        kw["batch_size"] = batch
    if name in ("SSCAM", "ISCAM", "SmoothGradCAMpp"):
        kw["num_samples"] = samples
    if name == "CAM":
        kw["fc_layer"] = "classifier"
    ext = getattr(tcm, name)(net, **kw)
    grad = name not in ("CAM", "ScoreCAM", "SSCAM", "ISCAM")

    def run(x, classes):
        xt = torch.from_numpy(x)
        for c in classes:
            if grad:
                out = net(xt)
                ext(class_idx=c, scores=out, normalized=False)
            else:
                with torch.no_grad():
                    out = net(xt)
                    ext(class_idx=c, scores=out, normalized=False)

    return run


def timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8, help="images for the gradient methods")
    p.add_argument("--heavy-images", type=int, default=1, help="images for the forward-heavy methods")
    p.add_argument("--peer-classes", type=int, default=1, help="classes the peers run for the heavy methods (x14)")
    p.add_argument("--samples", type=int, default=2, help="SS-CAM samples, IS-CAM steps, Smooth Grad-CAM++ samples")
    p.add_argument("--batch", type=int, default=32, help="masked images per forward (all three libraries)")
    p.add_argument("--methods", default="all", help="comma-separated methods, or all")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    import tempfile

    import paddle
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    paddle.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, net, cfg = build_pair(tmp)
    methods = GRADIENT + HEAVY + ["dff"] if args.methods == "all" else args.methods.split(",")
    x_all = images(cfg, max(args.images, args.heavy_images))
    print(f"# bench_methods: {datetime.date.today()}, {cpu_model()}, {os.cpu_count()} CPUs, DenseNet121 224 px, 14 "
          f"classes, paddle {paddle.__version__}, torch {torch.__version__}", flush=True)
    print("| method | chexcam s/img (engine) | pytorch-grad-cam s/img | ratio | torch-cam s/img | ratio |")
    print("|---|---|---|---|---|---|", flush=True)
    for method in methods:
        heavy = method in HEAVY
        x = x_all[:args.heavy_images if heavy else args.images]
        classes = list(range(args.peer_classes)) if heavy else list(range(14))
        scale = 14 / len(classes)
        run, engine = chexcam_runner(model, method, args.samples)
        peers = []
        for i, factory in enumerate((grad_cam_runner, torch_cam_runner)):
            peers.append(factory(net, method, args.samples, args.batch) if PEERS[method][i] else None)
        run(x[:1])  # warm-up (builds, first-call allocations)
        for peer in peers:
            if peer is not None and not heavy:
                peer(x[:1], [0])
        ours, theirs = [], [[], []]
        for _ in range(args.repeats):
            ours.append(timed(run, x) / len(x))
            for i, peer in enumerate(peers):
                if peer is not None:
                    theirs[i].append(timed(peer, x, classes) * scale / len(x))
        o = min(ours)
        cells = [f"{o:.3f} ({engine})"]
        for t in theirs:
            if t:
                cells += [f"{min(t):.3f}" + (" (x14)" if scale != 1 else ""), f"{min(t) / o:.1f}x"]
            else:
                cells += ["-", "-"]
        print(f"| {method} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
