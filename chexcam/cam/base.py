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
from paddle import nn

from ..errors import ChexcamError
from ..postprocess import normalize_mode, postprocess, upsample_size
from ..utils import did_you_mean

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
        raise ChexcamError(f"{type(model).__name__} has no layer '{name}'{did_you_mean(name, layers, cutoff=0.4)} "
                           "(names as in model.named_sublayers())")
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
                raise ChexcamError(f"unknown class '{c}'{did_you_mean(c, labels or [])} "
                                   f"(known: {', '.join(labels or []) or 'none: the model has no labels'})")
            out.append(list(labels).index(c))
        else:
            c = int(c)
            if not 0 <= c < num_classes:
                raise ChexcamError(f"class index {c} out of range for a model with {num_classes} classes")
            out.append(c)
    return out


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
    returns ``(probs, maps)`` as float32 numpy arrays; ReLU, upsampling and normalization are
    :func:`chexcam.postprocess.postprocess`, the same code every other path uses.
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
        probs = paddle.nn.functional.sigmoid(logits.detach()).numpy().astype(np.float32)
        raw = maps.detach().numpy().astype(np.float32)
        return probs, postprocess(raw, upsample_size(upsample, x.shape[2:]), mode, relu)


class BaseGradCAM(BaseCAM):
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
