"""The one CAM base class: hook lifecycle, class selection, ReLU, upsampling and normalization.

A method is a small subclass that only says how the captured feature map becomes class maps
(:meth:`BaseCAM.class_maps`). Hooks are borrowed for one call and always removed, even on an
exception; the train/eval flag of every sublayer is restored exactly; nothing is stored on the model.
"""

from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from ..errors import ChexcamError

NORMALIZE_MODES = ("none", "minmax", "global")
#: Smallest max-min range treated as non-constant; a flatter map normalizes to all zeros, never NaN.
EPS = 1e-7

ClassSpec = Union[None, int, str, Sequence[Union[int, str]]]


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
        import difflib

        close = difflib.get_close_matches(name, list(layers), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ChexcamError(f"model has no layer '{name}'{hint}")
    return layers[name]


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
    """Turn ``None`` / an index / a label name / a list of them into a list of head indices."""
    if classes is None:
        return list(range(num_classes))
    if isinstance(classes, (int, np.integer, str)):
        classes = [classes]
    out = []
    for c in classes:
        if isinstance(c, str):
            if not labels or c not in labels:
                import difflib

                close = difflib.get_close_matches(c, list(labels or []), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ChexcamError(f"unknown class '{c}'{hint} (known: {', '.join(labels or [])})")
            out.append(list(labels).index(c))
        else:
            c = int(c)
            if not 0 <= c < num_classes:
                raise ChexcamError(f"class index {c} out of range for a model with {num_classes} classes")
            out.append(c)
    return out


def normalize_mode(normalize: Union[bool, str]) -> str:
    """``True`` -> ``"minmax"``, ``False`` -> ``"none"``, a mode name checked against :data:`NORMALIZE_MODES`."""
    mode = {True: "minmax", False: "none"}[normalize] if isinstance(normalize, bool) else normalize
    if mode not in NORMALIZE_MODES:
        raise ChexcamError(f"unknown normalization '{mode}'; expected one of {', '.join(NORMALIZE_MODES)}")
    return mode


def normalize_maps_np(maps: np.ndarray, mode: str, inplace: bool = False) -> np.ndarray:
    """NumPy twin of :func:`normalize_maps` for ``[..., K, H, W]`` maps, NaN-aware.

    ``minmax`` scales each map over its last two axes, ``global`` over the last three (all classes of an
    image). NaN (no crop saw that pixel) stays NaN and is ignored by the min and max; a map whose finite
    range is below ``EPS`` becomes zeros. ``inplace`` reuses a float32 ``maps`` for the result (14 maps
    of a 1024x1024 image are 56 MB).
    """
    if mode == "none":
        return maps
    axes = (-2, -1) if mode == "minmax" else (-3, -2, -1)
    lo = np.fmin.reduce(maps, axis=axes, keepdims=True)  # fmin/fmax skip NaN without a copy
    hi = np.fmax.reduce(maps, axis=axes, keepdims=True)
    rng = np.nan_to_num(hi - lo, nan=0.0)  # an all-NaN map has no range
    ok = rng > EPS
    into = maps if inplace and maps.dtype == np.float32 else None
    out = np.subtract(maps, np.where(ok, lo, 0.0), out=into, dtype=np.float32)  # NaN stays NaN
    out /= np.where(ok, rng, 1.0)
    if not ok.all():  # rare: a constant map becomes zeros (NaN where not covered), never NaN everywhere
        out[np.broadcast_to(~ok, out.shape) & np.isfinite(out)] = 0.0
    return out


def normalize_maps(maps: paddle.Tensor, mode: str = "minmax", eps: float = EPS) -> paddle.Tensor:
    """Scale ``[B, K, H, W]`` maps to [0, 1].

    ``minmax``: each map by its own min and max. ``global``: one min and max over all K maps of an
    image, so a class with a weak map stays cold next to a strong one. ``none``: unchanged. A map whose
    range is below ``eps`` becomes all zeros (never NaN).
    """
    if mode == "none":
        return maps
    if mode not in NORMALIZE_MODES:
        raise ChexcamError(f"unknown normalization '{mode}'; expected one of {', '.join(NORMALIZE_MODES)}")
    axes = [2, 3] if mode == "minmax" else [1, 2, 3]
    lo = maps.min(axis=axes, keepdim=True)
    hi = maps.max(axis=axes, keepdim=True)
    rng = hi - lo
    safe = paddle.where(rng > eps, rng, paddle.ones_like(rng))
    return paddle.where(rng > eps, (maps - lo) / safe, paddle.zeros_like(maps))


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


class BaseCAM:
    """Base of every class-activation method.

    Subclasses set ``needs_grad`` and implement :meth:`class_maps`. Calling an instance runs one forward
    pass (plus a backward pass for gradient methods) with a temporary hook on ``target_layer`` and
    returns ``(probs, maps)`` as float32 numpy arrays.
    """

    needs_grad = False

    def __init__(self, model: nn.Layer, target_layer: Optional[str] = None):
        self.model = model
        self.layer_name = target_layer if target_layer is not None else getattr(model, "cam_layer", None)
        self.layer = find_layer(model, self.layer_name)

    # -- to implement -----------------------------------------------------------------------------
    def class_maps(self, feats: paddle.Tensor, logits: paddle.Tensor, classes: List[int]) -> paddle.Tensor:
        """Raw ``[B, len(classes), h, w]`` maps from the captured ``feats`` ``[B, C, h, w]``."""
        raise NotImplementedError

    # -- shared machinery --------------------------------------------------------------------------
    def forward(self, x: paddle.Tensor, classes: List[int]) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Logits ``[B, K]`` and raw maps ``[B, K', h, w]`` (model already in eval mode)."""
        with capture_output(self.layer, detach=not self.needs_grad) as store:
            if self.needs_grad:
                # a graph from the input on, even when every parameter is frozen
                x = x.detach()
                x.stop_gradient = False
                logits = self.model(x)
            else:
                with paddle.no_grad():
                    logits = self.model(x)
        if "output" not in store:
            raise ChexcamError(f"layer '{self.layer_name}' did not run in the model's forward pass")
        feats = store["output"]
        if not isinstance(feats, paddle.Tensor) or feats.ndim != 4:
            shape = list(feats.shape) if isinstance(feats, paddle.Tensor) else type(feats).__name__
            raise ChexcamError(f"layer '{self.layer_name}' outputs {shape}, not a [B, C, h, w] feature map; "
                               "pass layer='<name of a conv layer>'")
        if logits.ndim != 2:
            raise ChexcamError(f"the model returns shape {list(logits.shape)}; CAM methods need logits [B, K]")
        return logits, self.class_maps(feats, logits, classes)

    def __call__(
        self,
        x,
        classes: ClassSpec = None,
        normalize: Union[bool, str] = True,
        upsample: Union[bool, Tuple[int, int]] = True,
        relu: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray]:
        x = to_tensor(x)
        mode = normalize_mode(normalize)
        num_classes = int(getattr(self.model, "num_classes", 0)) or None
        with eval_mode(self.model):
            if num_classes is None:
                with paddle.no_grad():
                    num_classes = int(self.model(x[:1]).shape[-1])
            idx = resolve_classes(classes, num_classes, getattr(self.model, "labels", None))
            logits, maps = self.forward(x, idx)
        maps = maps.detach()
        if relu:
            maps = F.relu(maps)
        if upsample:
            size = tuple(x.shape[2:]) if upsample is True else tuple(upsample)
            if tuple(maps.shape[2:]) != size:
                maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        maps = normalize_maps(maps, mode)
        probs = F.sigmoid(logits.detach())
        return probs.numpy().astype(np.float32), maps.numpy().astype(np.float32)


class GradBaseCAM(BaseCAM):
    """Base of the gradient methods: one backward pass per selected class, channel weights from gradients.

    The target of class ``c`` is its own logit ``y^c = z_c`` (the input of its own sigmoid,
    ``p_c = sigmoid(z_c)``): with one sigmoid per finding no softmax couples the classes, and the
    gradient of ``p_c`` would only rescale every weight of an image by the positive ``sigmoid'(z_c)``.
    The images of a batch are independent in eval mode, so the gradient of ``sum_b y_b^c`` gives every
    image's own gradient; the classes are looped over, re-using one forward graph. Gradients are taken
    with ``paddle.grad`` and are never accumulated on parameters. Works on any layer with a
    ``[B, C, h, w]`` output, whatever follows it (GAP + Linear or flatten + dense layers).
    """

    needs_grad = True

    def channel_weights(self, feats: paddle.Tensor, grads: paddle.Tensor) -> paddle.Tensor:
        """``[B, C]`` weights of the feature channels from ``feats`` and ``grads`` (both ``[B, C, h, w]``)."""
        raise NotImplementedError

    def class_maps(self, feats: paddle.Tensor, logits: paddle.Tensor, classes: List[int]) -> paddle.Tensor:
        out = []
        fd = feats.detach()
        for i, c in enumerate(classes):
            (grads,) = paddle.grad(logits[:, c].sum(), feats, retain_graph=i < len(classes) - 1,
                                   allow_unused=True)
            if grads is None:
                raise ChexcamError(f"class {c} does not depend on layer '{self.layer_name}'")
            w = self.channel_weights(fd, grads.detach())
            out.append(paddle.einsum("bchw,bc->bhw", fd, w))
        return paddle.stack(out, axis=1)
