"""The one CAM base class: hook lifecycle, class selection, ReLU, upsampling and normalization.

A method is a small subclass that only says how the captured feature map becomes class maps
(:meth:`BaseCAM.class_maps`). Hooks are borrowed for one call and always removed, even on an
exception; the train/eval flag of every sublayer is restored exactly; nothing is stored on the model.

Models that are not chexcam's (``paddle.vision`` VGG, a Keras-style flatten + dense classifier) are explained
the same way: the head's activation is said explicitly (``activation="sigmoid"``: one independent sigmoid per
output, chexcam's multi-label and binary heads; ``"softmax"``: one softmax over the outputs, ImageNet
classifiers), the quantity explained is the class's ``target="logit"`` (default) or its
``target="probability"`` (the activation's output), and ``classes="predicted"`` explains each image's own
top-1 class.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from ..data.transforms import Geometry
from ..errors import ChexcamError
from ..postprocess import EPS, normalize_maps, normalize_mode, postprocess, resize_maps, upsample_size
from ..utils import did_you_mean

ClassSpec = Union[None, int, str, Sequence[Union[int, str]]]
#: how a model's logits become probabilities: one sigmoid per output (multi-label, binary) or one softmax
ACTIVATIONS = ("sigmoid", "softmax")
#: what a gradient method differentiates: the class's logit or its probability (the activation's output)
TARGETS = ("logit", "probability")
#: ``classes=PREDICTED`` explains each image's own top-1 class (the argmax of its logits)
PREDICTED = "predicted"


def check_activation(activation: str) -> str:
    """``activation`` checked against :data:`ACTIVATIONS` (one line naming the choices otherwise)."""
    if activation not in ACTIVATIONS:
        raise ChexcamError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)} "
                           "(how the model's logits become probabilities)")
    return activation


def check_target(target: str) -> str:
    """``target`` checked against :data:`TARGETS`."""
    if target not in TARGETS:
        raise ChexcamError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    return target


def activate(logits: np.ndarray, activation: str = "sigmoid") -> np.ndarray:
    """Probabilities ``[B, K]`` from logits ``[B, K]`` (float64 inside, float32 out): sigmoid per output or
    softmax over the outputs."""
    z = np.asarray(logits, dtype=np.float64)
    if check_activation(activation) == "sigmoid":
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def activate_tensor(logits: paddle.Tensor, activation: str = "sigmoid") -> paddle.Tensor:
    """:func:`activate` on a paddle tensor, differentiable (the ``target="probability"`` of gradient methods)."""
    if check_activation(activation) == "sigmoid":
        return paddle.nn.functional.sigmoid(logits)
    return paddle.nn.functional.softmax(logits, axis=-1)


def find_layer(model: nn.Layer, name: Optional[str]) -> nn.Layer:
    """The sublayer called ``name`` (dotted, as in ``named_sublayers``); default ``model.cam_layer``."""
    if name is None:
        name = getattr(model, "cam_layer", None)
        if name is None:
            raise ChexcamError(
                f"{type(model).__name__} has no 'cam_layer'; pass layer='<name of a conv layer>' "
                "(see model.named_sublayers())"
            )
    layers = dict(model.named_sublayers())
    if name not in layers:
        close = difflib.get_close_matches(str(name), list(layers), n=4, cutoff=0.4)
        hint = f"; close names: {', '.join(repr(c) for c in close)}" if close else ""
        raise ChexcamError(f"{type(model).__name__} has no layer '{name}'{hint} (names as in model.named_sublayers())")
    return layers[name]


def last_conv_name(model: nn.Layer) -> Optional[str]:
    """Name of the model's last ``Conv2D`` sublayer (a hint for a layer whose output is not a feature map)."""
    convs = [n for n, lyr in model.named_sublayers() if isinstance(lyr, nn.Conv2D)]
    return convs[-1] if convs else None


@contextlib.contextmanager
def capture_output(layer: nn.Layer, detach: bool = True):
    """Register a forward-post-hook on ``layer`` for the duration of the block.

    Yields a dict whose ``"output"`` is the layer's last output (detached unless ``detach=False``,
    which gradient-based methods need). The hook is removed on exit, exception or not.
    """
    store: Dict[str, paddle.Tensor] = {}

    def hook(_layer, _inputs, output):
        store["output"] = output.detach() if detach else output

    handle = layer.register_forward_post_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextlib.contextmanager
def eval_mode(model: nn.Layer):
    """Put ``model`` in eval mode for the block and restore every sublayer's own flag afterwards."""
    flags = [(layer, layer.training) for layer in [model, *model.sublayers()]]
    model.eval()
    try:
        yield
    finally:
        for layer, flag in flags:
            layer.training = flag


def resolve_classes(classes: ClassSpec, num_classes: int, labels: Optional[Sequence[str]] = None) -> List[int]:
    """Turn ``None`` / an index / a label name / a list of them into a list of head indices.

    ``"predicted"`` depends on each image's logits: :func:`class_table` resolves it.
    """
    if classes is None:
        return list(range(num_classes))
    if isinstance(classes, str) and classes == PREDICTED:
        raise ChexcamError("classes='predicted' depends on the logits; resolve it with class_table(classes, logits)")
    if isinstance(classes, (int, np.integer, str)):
        classes = [classes]
    out = []
    for c in classes:
        if isinstance(c, str):
            if not labels or c not in labels:
                raise ChexcamError(f"unknown class '{c}'{did_you_mean(c, labels or [])} "
                                   f"(known: {', '.join(labels or []) or 'none: the model has no labels'})")
            out.append(list(labels).index(c))
        else:
            c = int(c)
            if not 0 <= c < num_classes:
                raise ChexcamError(f"class index {c} out of range for a model with {num_classes} classes")
            out.append(c)
    return out


def class_table(classes: ClassSpec, logits: np.ndarray, labels: Optional[Sequence[str]] = None) -> np.ndarray:
    """The head indices explained for each image, ``[B, K']`` int64: the same row for every image for ``None``
    / indices / names, each image's top-1 class (``argmax`` of its logits, the same for sigmoid and softmax)
    for ``"predicted"``."""
    logits = np.asarray(logits)
    if isinstance(classes, str) and classes == PREDICTED:
        return np.argmax(logits, axis=1).astype(np.int64)[:, None]
    idx = resolve_classes(classes, int(logits.shape[1]), labels)
    return np.tile(np.asarray(idx, dtype=np.int64), (len(logits), 1))


def gather_classes(maps, table: np.ndarray, columns: Sequence[int]):
    """Maps ``[B, len(columns), ...]`` computed for ``columns`` -> ``[B, K', ...]`` with image ``b``'s classes
    ``table[b]`` (numpy array or paddle tensor)."""
    pos = {c: i for i, c in enumerate(columns)}
    sel = np.array([[pos[int(c)] for c in row] for row in table], dtype=np.int64)
    if isinstance(maps, paddle.Tensor):
        if (sel == sel[:1]).all() and list(sel[0]) == list(range(len(columns))):
            return maps
        return paddle.stack([paddle.index_select(maps[b], paddle.to_tensor(sel[b]), axis=0)
                             for b in range(len(sel))])
    return maps[np.arange(len(sel))[:, None], sel]


def to_tensor(x) -> paddle.Tensor:
    """numpy array or paddle tensor ``[B, 3, H, W]`` -> float32 paddle tensor."""
    if isinstance(x, np.ndarray):
        x = paddle.to_tensor(np.ascontiguousarray(x, dtype=np.float32))
    elif not isinstance(x, paddle.Tensor):
        raise ChexcamError(f"expected a numpy array or paddle.Tensor of shape [B, 3, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        raise ChexcamError(f"expected input of shape [B, C, H, W], got shape {list(x.shape)}")
    if x.dtype != paddle.float32:
        x = x.astype("float32")
    return x


@dataclass
class Pass:
    """What one forward pass hands a method: the input, the captured feature map and what is explained.

    ``feats`` is attached to the graph for gradient methods (``needs_grad``) and detached otherwise;
    ``scores`` is the ``[B, K]`` quantity explained (the logits, or the probabilities for
    ``target="probability"``); ``layer`` is the hooked sublayer (Ablation-CAM replaces its output).
    """

    x: paddle.Tensor
    feats: paddle.Tensor
    logits: paddle.Tensor
    scores: paddle.Tensor
    target: str
    activation: str
    layer: nn.Layer
    layer_name: str


#: how the maps of several layers are fused (``layer=[...]``): the mean of the per-layer maps, each rectified
#: and min-max normalized at the input size (pytorch-grad-cam), or LayerCAM's eq. 9 (``tanh(2 M / max M)`` per
#: layer, then the element-wise maximum, as torch-cam fuses)
FUSIONS = ("mean", "layercam")
#: the test-time augmentations of ``aug_smooth``: horizontal flip x these zooms of the input
AUG_ZOOMS = (0.9, 1.0, 1.1)
#: the options every CAM-family method takes (``explain(..., aug_smooth=True)``)
COMMON_OPTIONS = ("aug_smooth", "eigen_smooth", "fusion")


def first_component(x: np.ndarray, reference: Optional[np.ndarray] = None, center: bool = True) -> np.ndarray:
    """Projection of ``[..., C, h, w]`` onto its first principal component over the ``h w`` positions.

    Each ``[C, h w]`` slice is read as ``h w`` samples of ``C`` features; with ``center`` the features are
    centred first (as pytorch-grad-cam's ``get_2d_projection``). The sign of a singular vector is arbitrary,
    so it is fixed here: the projection correlates positively with ``reference`` (default: the channel sum
    of ``x``, the map the plain sum would give). float64 SVD, float32 out.
    """
    arr = np.nan_to_num(np.asarray(x, dtype=np.float64))
    lead, (c, h, w) = arr.shape[:-3], arr.shape[-3:]
    flat = arr.reshape(-1, c, h * w)
    ref = (arr.sum(axis=-3) if reference is None else np.asarray(reference, np.float64)).reshape(-1, h * w)
    out = np.empty((flat.shape[0], h * w), dtype=np.float64)
    for i, a in enumerate(flat):
        samples = a.T  # [h w, C]
        if center:
            samples = samples - samples.mean(axis=0)
        _, _, vt = np.linalg.svd(samples, full_matrices=False)
        proj = samples @ vt[0]
        out[i] = -proj if float(proj @ (ref[i] - ref[i].mean())) < 0 else proj
    return out.reshape(*lead, h, w).astype(np.float32)


def _zoom(x: paddle.Tensor, zoom: float) -> paddle.Tensor:
    if zoom == 1.0:
        return x
    h, w = int(x.shape[2]), int(x.shape[3])
    size = [max(1, int(round(h * zoom))), max(1, int(round(w * zoom)))]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class BaseCAM:
    """Base of every class-activation method.

    Subclasses set ``needs_grad`` and implement :meth:`class_maps`. Calling an instance runs one forward
    pass (plus a backward pass per explained class for gradient methods, or the method's own masked
    forwards, shared by every class) with a temporary hook on each target layer and returns
    ``(probs, maps)`` as float32 numpy arrays; ReLU, upsampling and normalization are
    :func:`chexcam.postprocess.postprocess`, the same code every other path uses.

    Options every method takes:

    * ``layer=[name, ...]``: the maps of several layers, each rectified, upsampled to the input and min-max
      normalized, then fused (``fusion="mean"``, pytorch-grad-cam's rule, or ``"layercam"``: Jiang et al.
      2021, eq. 9, ``tanh(2 M / max M)`` per layer and the element-wise maximum). The maps are then at the
      input resolution.
    * ``aug_smooth``: the maps of the input, its horizontal flip and zooms :data:`AUG_ZOOMS`, each mapped back
      to the input's pixels through :class:`~chexcam.data.transforms.Geometry` (and unflipped) and averaged
      (raw units; at the input resolution). pytorch-grad-cam's ``aug_smooth`` multiplies the pixel values by
      0.9/1.0/1.1 instead of zooming.
    * ``eigen_smooth``: the first principal component of the weighted activations ``w_k A_k`` (or of the
      element-wise products) instead of their sum over ``k`` (:func:`first_component`).
    """

    needs_grad = False
    #: whether ``target="probability"`` is meaningful (gradients of, or scores from, the activation)
    supports_probability = False
    #: the quantity explained when ``target`` is unset
    default_target = "logit"
    #: the method's own keyword options (beside :data:`COMMON_OPTIONS`), with their defaults
    DEFAULTS: Dict[str, object] = {}
    #: whether ``eigen_smooth`` applies (methods that are a principal component already say no)
    eigen_smoothable = True

    def __init__(self, model: nn.Layer, target_layer=None, aug_smooth: bool = False, eigen_smooth: bool = False,
                 fusion: str = "mean", **options):
        self.model = model
        names = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
        if not names:
            raise ChexcamError("layer=[] names no layer; pass one name, a list of names, or None for the model's "
                               "cam_layer")
        default = getattr(model, "cam_layer", None)
        self.layer_names = [n if n is not None else default for n in names]
        self.layers = [find_layer(model, n) for n in names]
        self.layer_name, self.layer = self.layer_names[0], self.layers[0]
        if fusion not in FUSIONS:
            raise ChexcamError(f"unknown fusion {fusion!r}; expected one of {', '.join(FUSIONS)}")
        if eigen_smooth and not self.eigen_smoothable:
            raise ChexcamError(f"{type(self).__name__} is a principal component already; eigen_smooth does not apply")
        self.aug_smooth, self.eigen_smooth, self.fusion = bool(aug_smooth), bool(eigen_smooth), fusion
        unknown = [k for k in options if k not in self.DEFAULTS]
        if unknown:
            raise ChexcamError(f"{type(self).__name__} takes no option '{unknown[0]}'"
                               f"{did_you_mean(unknown[0], self.DEFAULTS)}")
        self.options = {**self.DEFAULTS, **options}

    # -- to implement -----------------------------------------------------------------------------
    def class_maps(self, p: Pass, classes: List[int]) -> paddle.Tensor:
        """Raw ``[B, len(classes), h, w]`` maps of the classes ``classes`` from one forward pass ``p``."""
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------------------------
    def reduce(self, weighted: paddle.Tensor) -> paddle.Tensor:
        """``[B, C, h, w]`` weighted activations -> ``[B, h, w]``: their sum over channels, or with
        ``eigen_smooth`` their first principal component (:func:`first_component`)."""
        if not self.eigen_smooth:
            return weighted.sum(axis=1)
        return paddle.to_tensor(first_component(weighted.numpy()))

    def weighted_sum(self, feats: paddle.Tensor, weights: paddle.Tensor) -> paddle.Tensor:
        """``sum_k weights[b, k] feats[b, k]`` -> ``[B, h, w]`` (one einsum; ``eigen_smooth`` reduces the
        weighted activations by their first component instead)."""
        if not self.eigen_smooth:
            return paddle.einsum("bchw,bc->bhw", feats, weights)
        return self.reduce(feats * weights.unsqueeze([2, 3]))

    # -- shared machinery --------------------------------------------------------------------------
    def resolve_target(self, target: Optional[str] = None) -> str:
        """The quantity this method explains for ``target`` (default :attr:`default_target`), or a one-line error."""
        target = check_target(target or self.default_target)
        if target == "probability" and not self.supports_probability:
            raise ChexcamError(f"{type(self).__name__} weights the feature map by the head (logit units); "
                               "target='probability' needs a gradient method (gradcam, ...), a score method "
                               "(scorecam, sscam, iscam, ablationcam) or lime")
        return target

    def _not_a_feature_map(self, feats, name: str) -> ChexcamError:
        shape = list(feats.shape) if isinstance(feats, paddle.Tensor) else type(feats).__name__
        conv = last_conv_name(self.model)
        hint = f" such as the last convolution '{conv}' or the activation after it" if conv else ""
        return ChexcamError(f"layer '{name}' outputs {shape}, not a [B, C, h, w] feature map; "
                            f"pass layer='<name of a conv layer>'{hint}")

    def _capture(self, x: paddle.Tensor):
        """One forward pass with every target layer hooked: ``(logits, [feats per layer])``."""
        with contextlib.ExitStack() as stack:
            stores = [stack.enter_context(capture_output(lyr, detach=not self.needs_grad)) for lyr in self.layers]
            if self.needs_grad:
                # a graph from the input on, even when every parameter is frozen
                x = x.detach()
                x.stop_gradient = False
                logits = self.model(x)
            else:
                with paddle.no_grad():
                    logits = self.model(x)
        feats = []
        for name, store in zip(self.layer_names, stores):
            if "output" not in store:
                raise ChexcamError(f"layer '{name}' did not run in the model's forward pass")
            f = store["output"]
            if not isinstance(f, paddle.Tensor) or f.ndim != 4:
                raise self._not_a_feature_map(f, name)
            feats.append(f)
        if not isinstance(logits, paddle.Tensor) or logits.ndim != 2:
            shape = list(logits.shape) if isinstance(logits, paddle.Tensor) else type(logits).__name__
            raise ChexcamError(f"the model returns {shape}; CAM methods need logits [B, K]")
        return x, logits, feats

    def forward(self, x: paddle.Tensor, classes: ClassSpec = None, target: str = "logit",
                activation: str = "sigmoid") -> Tuple[paddle.Tensor, paddle.Tensor, np.ndarray]:
        """Logits ``[B, K]``, raw maps ``[B, K', h, w]`` (fused at the input size for several layers) and the
        class table ``[B, K']`` (model in eval mode)."""
        x, logits, feats = self._capture(x)
        table = class_table(classes, logits.detach().numpy(), getattr(self.model, "labels", None))
        columns = list(dict.fromkeys(int(c) for c in table.ravel()))  # each class once, first-seen order
        scores = logits if target == "logit" else activate_tensor(logits, activation)
        per_layer = []
        for f, lyr, name in zip(feats, self.layers, self.layer_names):
            p = Pass(x, f, logits, scores, target, activation, lyr, name)
            per_layer.append(self.class_maps(p, columns))
        maps = per_layer[0] if len(per_layer) == 1 else paddle.to_tensor(
            fuse_maps([m.detach().numpy() for m in per_layer], tuple(x.shape[2:]), self.fusion))
        return logits, gather_classes(maps, table, columns), table

    def raw(self, x: paddle.Tensor, classes: ClassSpec = None, target: str = "logit",
            activation: str = "sigmoid") -> Tuple[np.ndarray, np.ndarray]:
        """Logits and raw maps as numpy, with ``aug_smooth`` applied (model in eval mode)."""
        if not self.aug_smooth:
            logits, maps, _ = self.forward(x, classes, target, activation)
            return logits.detach().numpy(), maps.detach().numpy().astype(np.float32)
        h, w = int(x.shape[2]), int(x.shape[3])
        logits, table, acc = None, None, []
        for flip in (False, True):
            for zoom in AUG_ZOOMS:
                xa = _zoom(paddle.flip(x, axis=[3]) if flip else x, zoom)
                lg, maps, tb = self.forward(xa, classes if table is None else table[0].tolist(), target, activation)
                m = maps.detach().numpy().astype(np.float32)
                geo = Geometry(orig_h=h, orig_w=w, sx=xa.shape[3] / w, sy=xa.shape[2] / h, x0=0.0, y0=0.0,
                               out_h=int(xa.shape[2]), out_w=int(xa.shape[3]))
                back = np.stack([geo.maps_to_original(mb) for mb in m])
                acc.append(back[..., ::-1] if flip else back)
                if not flip and zoom == 1.0:
                    logits = lg.detach().numpy()
                if table is None:
                    table = tb
                    if isinstance(classes, str) and classes == PREDICTED and (tb != tb[:1]).any():
                        raise ChexcamError("aug_smooth with classes='predicted' needs the same top-1 class for "
                                           "every image of the batch; explain the images one by one")
        return logits, np.mean(np.stack(acc), axis=0).astype(np.float32)

    def __call__(
        self,
        x,
        classes: ClassSpec = None,
        normalize: Union[bool, str] = True,
        upsample: Union[bool, Tuple[int, int]] = True,
        relu: bool = False,
        target: Optional[str] = None,
        activation: str = "sigmoid",
    ) -> Tuple[np.ndarray, np.ndarray]:
        """``(probs [B, K], maps [B, K', H', W'])``; see :func:`chexcam.explain` for the arguments."""
        target = self.resolve_target(target)
        check_activation(activation)
        x = to_tensor(x)
        mode = normalize_mode(normalize)
        with eval_mode(self.model):
            logits, raw = self.raw(x, classes, target, activation)
        probs = activate(logits, activation)
        return probs, postprocess(raw, upsample_size(upsample, x.shape[2:]), mode, relu)


def fuse_maps(maps: Sequence[np.ndarray], size: Tuple[int, int], fusion: str = "mean") -> np.ndarray:
    """Fuse raw ``[B, K, h_l, w_l]`` maps of several layers at ``size = (H, W)``.

    ``mean``: each layer's map rectified, upsampled (bilinear) and min-max normalized, then averaged
    (pytorch-grad-cam's ``aggregate_multi_layers`` before its final rescale). ``layercam``: each rectified,
    upsampled map scaled by LayerCAM's eq. 9, ``tanh(2 M / max M)``, then the element-wise maximum (torch-cam's
    ``LayerCAM.fuse_cams``)."""
    per = [resize_maps(np.maximum(np.asarray(m, np.float32), 0.0), size) for m in maps]
    if fusion == "mean":
        return np.mean([normalize_maps(m, "minmax") for m in per], axis=0).astype(np.float32)
    if fusion == "layercam":
        scaled = []
        for m in per:
            top = m.max(axis=(-2, -1), keepdims=True)
            scaled.append(np.tanh(2.0 * m / np.where(top > EPS, top, 1.0)))
        return np.max(scaled, axis=0).astype(np.float32)
    raise ChexcamError(f"unknown fusion {fusion!r}; expected one of {', '.join(FUSIONS)}")


class BaseGradCAM(BaseCAM):
    """Base of the gradient methods: one forward pass, then one backward pass per selected class that stops
    at the hooked layer (``paddle.grad`` with respect to the captured feature map, never into the parameters).

    The target of class ``c`` is by default its own logit ``y^c = z_c`` (the input of its own sigmoid,
    ``p_c = sigmoid(z_c)``): with one sigmoid per finding no softmax couples the classes, and the
    gradient of ``p_c`` would only rescale every weight of an image by the positive ``sigmoid'(z_c)``.
    ``target="probability"`` differentiates ``p_c`` instead (``sigmoid`` or ``softmax`` of the logits: with a
    softmax the other classes' logits enter the gradient). The images of a batch are independent in eval
    mode, so the gradient of ``sum_b y_b^c`` gives every image's own gradient; the classes are looped over,
    re-using one forward graph. Works on any layer with a ``[B, C, h, w]`` output, whatever follows it
    (GAP + Linear or flatten + dense layers, as in VGG).

    A subclass says how the activations ``A`` and one class's gradients ``g`` become its map: channel weights
    (:meth:`channel_weights`, then ``sum_k w_k A_k``) or an element-wise rule (:meth:`combine`).
    """

    needs_grad = True
    supports_probability = True

    def class_target(self, p: Pass, c: int) -> paddle.Tensor:
        """The scalar differentiated for class ``c``: ``sum_b scores[b, c]`` (FinerCAM overrides it)."""
        return p.scores[:, c].sum()

    def channel_weights(self, feats: paddle.Tensor, grads: paddle.Tensor) -> paddle.Tensor:
        """``[B, C]`` weights of the feature channels from ``feats`` and ``grads`` (both ``[B, C, h, w]``)."""
        raise NotImplementedError

    def combine(self, feats: paddle.Tensor, grads: paddle.Tensor, p: Pass) -> paddle.Tensor:
        """One class's ``[B, h, w]`` map from the activations and its gradients: ``sum_k w_k A_k``."""
        return self.weighted_sum(feats, self.channel_weights(feats, grads))

    def gradients(self, p: Pass, classes: List[int]):
        """Yield ``(c, d target_c / d feats)`` for each class, one backward pass each, stopping at the layer."""
        for i, c in enumerate(classes):
            (grads,) = paddle.grad(self.class_target(p, c), p.feats, retain_graph=True, allow_unused=True)
            if grads is None:
                raise ChexcamError(f"class {c} does not depend on layer '{p.layer_name}'")
            yield c, grads.detach()

    def class_maps(self, p: Pass, classes: List[int]) -> paddle.Tensor:
        fd = p.feats.detach()
        return paddle.stack([self.combine(fd, g, p) for _, g in self.gradients(p, classes)], axis=1)
