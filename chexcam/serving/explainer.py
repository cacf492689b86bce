"""The fast engine, asked for by name: ``Explainer(model)(x) -> (probs, maps)``.

:func:`chexcam.explain` is the reference (dynamic graph, nothing kept). An :class:`Explainer` is built once
for a fixed model and then called many times: it takes a *snapshot* of the model, exports the snapshot and
its CAM into one static graph, runs it with Paddle Inference (oneDNN on CPU, optionally TensorRT on GPU) and
proves at construction that it gives what ``explain`` gives. Nothing is written to disk beyond a temporary
folder that is removed before the constructor returns (and the translated source that ``paddle.jit.to_static``
keeps in ``~/.cache/paddle/to_static_tmp/<pid>`` until the process exits), and nothing is kept outside the object.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from typing import List, Optional, Tuple, Union

import numpy as np
import paddle
from paddle import nn

from ..cam import activate, build_method, class_table
from ..cam.base import check_activation
from ..cam.graph import export_blocker
from ..errors import ChexcamError
from ..postprocess import normalize_mode, postprocess, upsample_size
from ..registry import CAM_METHODS
from ..utils import has_gpu
from .export import export_model
from .predictor import PRECISIONS, Predictor, cpu_has_bf16

logger = logging.getLogger(__name__)

ENGINES = ("auto", "dynamic", "predictor")


def predictor_methods() -> List[str]:
    """Methods the predictor serves: ``cam`` (its exported graph holds the CAM), ``lime`` (the predictor's
    probabilities are LIME's forward passes) and the methods whose class says ``serves_forwards`` (the Score-CAM
    family: the masked images go through the predictor; the feature map comes from one dynamic-graph forward).
    The graph's CAM output is ignored by all but ``cam``."""
    return ["cam", "lime"] + [n for n in CAM_METHODS.names() if getattr(CAM_METHODS.get(n), "serves_forwards", False)]
#: relative tolerance of the construction-time check (max abs difference / max abs reference value)
RTOL = {"fp32": 1e-5, "bf16": 5e-2}
#: the input of the construction-time check: two seeded images at this size
CHECK_SHAPE = (2, 3, 128, 128)


#: layer attributes the forward pass reads that are not tensors (paddle's BatchNorm, Conv, Dropout, Pool)
_SETTINGS = ("_epsilon", "_momentum", "_data_format", "_data_layout", "_fuse_with_relu", "_use_global_stats", "_stride", "_padding", "_dilation",
             "_groups", "_kernel_size", "_padding_mode", "p", "mode", "axis", "_output_size", "ksize", "ceil_mode",
             "exclusive", "_act")


def structure_signature(model: nn.Layer) -> Tuple:
    """What shapes a model's graph but is not a parameter: class, ``cam_layer``, layer names and types,
    and every numeric setting of a layer that the forward pass reads (BatchNorm epsilon and data format,
    dropout rate, pooling and convolution settings). Cheap (a walk over the sublayers, about half a
    millisecond for DenseNet121), so an :class:`Explainer` compares it on every call."""
    parts: List[Tuple] = [(type(model).__module__, type(model).__qualname__, getattr(model, "cam_layer", None),
                           getattr(model, "features_layer", None), int(getattr(model, "output_stride", 0) or 0))]
    for name, layer in model.named_sublayers():
        d = layer.__dict__
        parts.append((name, type(layer).__name__, tuple(d.get(k) for k in _SETTINGS)))
    return tuple(parts)


def _describe_change(old: Tuple, new: Tuple) -> str:
    if old[0] != new[0]:
        names = ("class module", "class", "cam_layer", "features_layer", "output_stride")
        for label, a, b in zip(names, old[0], new[0]):
            if a != b:
                return f"{label} {a!r} -> {b!r}"
    if len(old) != len(new):
        return f"{len(old) - 1} sublayers -> {len(new) - 1}"
    for a, b in zip(old[1:], new[1:]):
        if a != b:
            if a[:2] != b[:2]:
                return f"layer '{a[0]}' ({a[1]}) -> '{b[0]}' ({b[1]})"
            changed = [f"{k.lstrip('_')} {va!r} -> {vb!r}" for k, va, vb in zip(_SETTINGS, a[2], b[2]) if va != vb]
            return f"layer '{a[0]}' settings {', '.join(changed) or 'changed'}"
    return "structure changed"


class ExportMismatch(ChexcamError):
    """The exported graph does not give what the dynamic graph gives: always an error, never a fallback."""


def _default_device() -> str:
    return "gpu" if has_gpu() and str(paddle.get_device()).startswith("gpu") else "cpu"


class Explainer:
    """Probabilities and class maps of a *snapshot* of ``model``, fast: build once, call many times.

    ``ex = Explainer(model, method="cam", engine="auto", precision="fp32")`` then
    ``probs, maps = ex(x, classes=None, normalize=True, upsample=True, relu=False)`` with the arguments and
    results of :func:`chexcam.explain`.

    **What a snapshot means.** At construction the Explainer deep-copies ``model`` (weights, buffers and
    structure, in eval mode) and from then on explains that copy, never the live model. With
    ``engine="predictor"`` (or ``"auto"`` where possible) the copy and its CAM are exported into a static
    graph, loaded by Paddle Inference (the temporary export folder is deleted at once), and checked against
    the dynamic graph of the copy on a seeded batch of :data:`CHECK_SHAPE`: probabilities and maps must agree
    within :data:`RTOL` (``1e-5`` relative in fp32), or the constructor raises. So:

    * changing the live model's **weights** afterwards (an optimizer step, ``set_state_dict``, ``set_value``)
      does not change what the Explainer returns: it keeps explaining the snapshot until :meth:`refresh`.
      :meth:`stale` compares every tensor with the snapshot exactly, on request (a few milliseconds);
    * changing the live model's **structure** (``cam_layer``, a BatchNorm epsilon, a replaced layer) is
      detected on every call by :func:`structure_signature` (about half a millisecond) and raises a
      ChexcamError naming the change; :meth:`refresh` takes a new snapshot.

    **LIME** (``method="lime"``) runs its ``num_samples`` forward passes per image through the predictor (a
    batch of ``batch_size`` perturbed images per run; the graph's CAM output is ignored), so it is the fast way
    to LIME a chexcam model; ``ex(x)`` then returns a :class:`~chexcam.cam.lime.LimeResult` (``probs, maps``
    plus ``segments``). :meth:`predict` serves probabilities alone, for any method.

    Args:
        model: a chexcam model, or any Layer returning logits for the gradient methods and LIME.
        method: a registered method. ``cam`` and ``lime`` run on the predictor, and so do the masked forwards of
            the Score-CAM family (``scorecam``, ``sscam``, ``iscam``; :func:`predictor_methods`); the gradient
            methods, Ablation-CAM, the eigen methods and DFF run the snapshot's dynamic graph.
        engine: ``"predictor"`` (Paddle Inference; an error when it cannot serve the model), ``"dynamic"``
            (the snapshot's dynamic graph, exactly what :func:`chexcam.explain` runs) or ``"auto"`` (the
            predictor wherever the model can be exported; otherwise the dynamic graph, with a WARNING that
            names the reason when the method is ``cam``).
        precision: ``"fp32"`` or ``"bf16"`` (oneDNN bf16 on a CPU with AVX512-BF16/AMX, TensorRT half on a
            GPU; predictor only, checked within ``RTOL["bf16"]``).
        layer: the layer to explain (default ``model.cam_layer``).
        device: ``"cpu"`` or ``"gpu"`` for the predictor (default: the GPU when paddle uses one).
        threads: CPU math threads of the predictor (0: every CPU of this process).
        mkldnn: oneDNN kernels on CPU (conv + BN + ReLU fusion).
        tensorrt: run supported subgraphs with TensorRT on a GPU.
        target: ``"logit"`` or ``"probability"`` (see :func:`chexcam.explain`).
        activation: ``"sigmoid"`` (chexcam's heads) or ``"softmax"``: how logits become probabilities.
        **options: the method's options (LIME: ``num_samples``, ``segmentation``, ``seed``, ...).
    """

    def __init__(self, model: nn.Layer, method: str = "cam", engine: str = "auto", precision: str = "fp32",
                 layer: Optional[str] = None, device: Optional[str] = None, threads: int = 0,
                 mkldnn: bool = True, tensorrt: bool = False, target: Optional[str] = None,
                 activation: str = "sigmoid", **options):
        if engine not in ENGINES:
            raise ChexcamError(f"unknown engine '{engine}'; expected one of {', '.join(ENGINES)}")
        if precision not in PRECISIONS:
            raise ChexcamError(f"unknown precision '{precision}'; expected one of {', '.join(PRECISIONS)}")
        if not isinstance(model, nn.Layer):
            raise ChexcamError(f"Explainer needs a paddle.nn.Layer, got {type(model).__name__}")
        CAM_METHODS.get(method)  # an unknown method fails here
        self.method, self.requested_engine, self.precision, self.layer = method, engine, precision, layer
        self.activation, self.options, self.target_arg = check_activation(activation), dict(options), target
        self.device = device or _default_device()
        self.threads, self.mkldnn, self.tensorrt = threads, mkldnn, tensorrt
        self._live = model
        self._take_snapshot()

    # -- construction ------------------------------------------------------------------------------
    def _take_snapshot(self) -> None:
        model = self._live
        self.signature = structure_signature(model)
        self.snapshot = copy.deepcopy(model)
        self.snapshot.eval()
        self._cam = build_method(self.snapshot, self.method, self.layer, **self.options)  # checks layer, options
        self.target = self._cam.resolve_target(self.target_arg)
        self.labels = list(getattr(model, "labels", ()) or ())
        self._predictor: Optional[Predictor] = None
        self.engine = "dynamic"
        self.check_error: Optional[float] = None
        why = self._predictor_blocker()
        if why is None:
            try:
                self._predictor = self._build_predictor()
                self.engine = "predictor"
            except ExportMismatch:
                raise
            except ChexcamError as exc:
                why = str(exc)
        if why is not None:
            if self.requested_engine == "predictor" or self.precision != "fp32":
                raise ChexcamError(f"the predictor engine cannot serve this model: {why}")
            if self.requested_engine == "auto" and self.method in predictor_methods():
                logger.warning("Explainer uses the dynamic graph, not the predictor: %s", why)
        if self.method == "lime" and self._predictor is not None:
            # LIME's forward passes through the predictor: the same method object, another predict_fn
            self._cam = CAM_METHODS.get("lime")(self.snapshot, self.layer, predict_fn=self.predict, **self.options)
        elif self.method != "cam" and self._predictor is not None:
            # the Score-CAM family: its masked forwards through the predictor (logits)
            self._cam = CAM_METHODS.get(self.method)(self.snapshot, self.layer, forward_fn=self.logits,
                                                     **self.options)
        logger.debug("Explainer(%s) on %s, %s", self.method, self.engine, self.precision)

    def _predictor_blocker(self) -> Optional[str]:
        """Why the predictor cannot serve this Explainer, or ``None``."""
        if self.requested_engine == "dynamic":
            return "engine='dynamic' was asked for"
        if self.method not in predictor_methods():
            return (f"method '{self.method}' has no exported graph (only {', '.join(predictor_methods())}; gradient "
                    "methods need the dynamic graph)")
        if self.method == "cam" and self.layer is not None and self.layer != getattr(self.snapshot, "features_layer", None):
            return f"layer '{self.layer}' is not the layer that feeds global pooling"
        why = export_blocker(self.snapshot)
        if why:
            return why
        if not paddle.in_dynamic_mode():
            return "paddle is in static graph mode"
        if self.precision == "bf16" and self.device == "cpu" and not cpu_has_bf16():
            return "precision bf16 on CPU needs AVX512-BF16 or AMX, which this CPU does not report (/proc/cpuinfo)"
        try:
            from paddle import inference  # noqa: F401
        except ImportError as exc:
            return f"paddle.inference is not available ({exc})"
        return None

    def _build_predictor(self) -> Predictor:
        """Export the snapshot into a temporary folder, load it, delete the folder, check the numbers."""
        try:
            tmp = tempfile.mkdtemp(prefix="chexcam-explainer-")
        except OSError as exc:
            raise ChexcamError(f"cannot create a temporary folder for the export in {tempfile.gettempdir()}: "
                               f"{exc.strerror or exc}") from None
        try:
            try:
                export_model(self.snapshot, tmp, output="logits", quiet=True)
            except ChexcamError:
                raise
            except Exception as exc:  # paddle's tracer raises many types; auto falls back with this reason
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ChexcamError(f"export failed: {type(exc).__name__}: {first}") from None
            predictor = Predictor(tmp, device=self.device, threads=self.threads, mkldnn=self.mkldnn,
                                  precision=self.precision, tensorrt=self.tensorrt)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.check_error = self._check(predictor)
        return predictor

    def _check(self, predictor: Predictor) -> float:
        """Relative difference between the predictor and the snapshot's dynamic graph; raises above RTOL."""
        x = np.random.default_rng(0).standard_normal(CHECK_SHAPE).astype(np.float32)
        # the exported graph is the model + its CAM, whatever method it serves
        ref_probs, ref_maps = build_method(self.snapshot, "cam")(x, normalize=False, upsample=False)
        logits, maps = predictor.run(x)
        probs = _sigmoid(logits)
        scale = max(float(np.abs(ref_maps).max()), 1e-6)
        err = max(float(np.abs(probs - ref_probs).max()), float(np.abs(maps - ref_maps).max()) / scale)
        if not np.isfinite(err) or err > RTOL[self.precision]:
            raise ExportMismatch(f"the exported graph differs from the dynamic graph by {err:.1e} (relative), "
                               f"more than {RTOL[self.precision]:.0e} in {self.precision}")
        return err

    # -- use -------------------------------------------------------------------------------------------
    def __call__(self, x, classes=None, normalize: Union[bool, str] = True,
                 upsample: Union[bool, Tuple[int, int]] = True, relu: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """``(probs [B, K], maps [B, K', H', W'])``, float32 numpy, as :func:`chexcam.explain` returns them."""
        self._check_structure()
        if self._predictor is None or self.method != "cam":
            return self._cam(x, classes=classes, normalize=normalize, upsample=upsample, relu=relu,
                             target=self.target, activation=self.activation)
        mode = normalize_mode(normalize)
        x = _as_batch(x)
        logits, raw = self._predictor.run(x)
        table = class_table(classes, logits, self.labels)
        if table.shape[1] != raw.shape[1] or not (table == np.arange(raw.shape[1])).all():
            raw = raw[np.arange(len(raw))[:, None], table]
        return activate(logits, self.activation), postprocess(raw, upsample_size(upsample, x.shape[2:]), mode, relu)

    def _check_structure(self) -> None:
        now = structure_signature(self._live)
        if now != self.signature:
            raise ChexcamError("the model changed since this Explainer was built "
                               f"({_describe_change(self.signature, now)}); call .refresh() to explain it as it is now")

    def predict(self, x) -> np.ndarray:
        """Probabilities ``[B, K]`` of the snapshot (float32 numpy): the predictor's forward pass where it serves
        the model, else the snapshot's dynamic graph. LIME's ``predict_fn`` and the faithfulness metrics use it."""
        self._check_structure()
        x = _as_batch(x)
        if self._predictor is not None:
            logits, _ = self._predictor.run(x)
            return activate(logits, self.activation)
        with paddle.no_grad():
            logits = self.snapshot(paddle.to_tensor(x))
        return activate(logits.numpy(), self.activation)

    def logits(self, x) -> np.ndarray:
        """Logits ``[B, K]`` of the snapshot (float32 numpy), as :meth:`predict`: the Score-CAM family's
        ``forward_fn``."""
        self._check_structure()
        x = _as_batch(x)
        if self._predictor is not None:
            return self._predictor.run(x)[0]
        with paddle.no_grad():
            return self.snapshot(paddle.to_tensor(x)).numpy()

    def refresh(self) -> "Explainer":
        """Take a new snapshot of the live model (export and check again); returns ``self``."""
        self._take_snapshot()
        return self

    def stale(self) -> Optional[str]:
        """What differs between the live model and the snapshot (structure, or the first tensor whose values
        differ, compared exactly), or ``None`` when they are the same."""
        now = structure_signature(self._live)
        if now != self.signature:
            return _describe_change(self.signature, now)
        live, snap = self._live.state_dict(), self.snapshot.state_dict()
        if list(live) != list(snap):
            return "the set of parameters and buffers changed"
        for name, t in live.items():
            a, b = t.numpy(), snap[name].numpy()
            if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=True):
                return f"'{name}' changed"
        return None

    def __repr__(self) -> str:
        return (f"Explainer(method={self.method!r}, engine={self.engine!r}, precision={self.precision!r}, "
                f"device={self.device!r}, check_error={self.check_error})")


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)


def _as_batch(x) -> np.ndarray:
    if isinstance(x, paddle.Tensor):
        x = x.numpy()
    if not isinstance(x, np.ndarray):
        raise ChexcamError(f"expected a numpy array or paddle.Tensor of shape [B, 3, H, W], got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ChexcamError(f"expected input of shape [B, C, H, W] with C = 3, got shape {list(x.shape)}")
    return np.ascontiguousarray(x, dtype=np.float32)
