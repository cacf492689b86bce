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
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
from paddle import nn

from ..errors import ChexcamError
from ..postprocess import normalize_mode, postprocess, upsample_size
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


class BaseCAM:
    """Base of every class-activation method.

    Subclasses set ``needs_grad`` and implement :meth:`class_maps`. Calling an instance runs one forward
    pass (plus a backward pass per explained class for gradient methods) with a temporary hook on
    ``target_layer`` and returns ``(probs, maps)`` as float32 numpy arrays; ReLU, upsampling and normalization
    are :func:`chexcam.postprocess.postprocess`, the same code every other path uses.
    """

    needs_grad = False

    def __init__(self, model: nn.Layer, target_layer: Optional[str] = None):
        self.model = model
        self.layer_name = target_layer if target_layer is not None else getattr(model, "cam_layer", None)
        self.layer = find_layer(model, self.layer_name)

    # -- to implement -----------------------------------------------------------------------------
    def class_maps(self, feats: paddle.Tensor, logits: paddle.Tensor, classes: List[int]) -> paddle.Tensor:
        """Raw ``[B, len(classes), h, w]`` maps from the captured ``feats`` ``[B, C, h, w]``; ``logits`` is the
        ``[B, K]`` quantity explained (the logits, or the probabilities for ``target="probability"``)."""
        raise NotImplementedError

    # -- shared machinery --------------------------------------------------------------------------
    def resolve_target(self, target: Optional[str] = None) -> str:
        """The quantity this method explains for ``target`` (default ``"logit"``), or a one-line error."""
        target = check_target(target or "logit")
        if target == "probability" and not self.needs_grad:
            raise ChexcamError(f"{type(self).__name__} weights the feature map by the head (logit units); "
                               "target='probability' needs a gradient method (gradcam, gradcampp) or lime")
        return target

    def _not_a_feature_map(self, feats) -> ChexcamError:
        shape = list(feats.shape) if isinstance(feats, paddle.Tensor) else type(feats).__name__
        conv = last_conv_name(self.model)
        hint = f" such as the last convolution '{conv}' or the activation after it" if conv else ""
        return ChexcamError(f"layer '{self.layer_name}' outputs {shape}, not a [B, C, h, w] feature map; "
                            f"pass layer='<name of a conv layer>'{hint}")

    def forward(self, x: paddle.Tensor, classes: ClassSpec = None, target: str = "logit",
                activation: str = "sigmoid") -> Tuple[paddle.Tensor, paddle.Tensor, np.ndarray]:
        """Logits ``[B, K]``, raw maps ``[B, K', h, w]`` and the class table ``[B, K']`` (model in eval mode)."""
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
            raise self._not_a_feature_map(feats)
        if not isinstance(logits, paddle.Tensor) or logits.ndim != 2:
            shape = list(logits.shape) if isinstance(logits, paddle.Tensor) else type(logits).__name__
            raise ChexcamError(f"the model returns {shape}; CAM methods need logits [B, K]")
        table = class_table(classes, logits.detach().numpy(), getattr(self.model, "labels", None))
        columns = list(dict.fromkeys(int(c) for c in table.ravel()))  # each class once, first-seen order
        scores = logits if target == "logit" else activate_tensor(logits, activation)
        maps = self.class_maps(feats, scores, columns)
        return logits, gather_classes(maps, table, columns), table

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
            logits, maps, _ = self.forward(x, classes, target, activation)
        probs = activate(logits.detach().numpy(), activation)
        raw = maps.detach().numpy().astype(np.float32)
        return probs, postprocess(raw, upsample_size(upsample, x.shape[2:]), mode, relu)


class BaseGradCAM(BaseCAM):
    """Base of the gradient methods: one backward pass per selected class, channel weights from gradients.

    The target of class ``c`` is by default its own logit ``y^c = z_c`` (the input of its own sigmoid,
    ``p_c = sigmoid(z_c)``): with one sigmoid per finding no softmax couples the classes, and the
    gradient of ``p_c`` would only rescale every weight of an image by the positive ``sigmoid'(z_c)``.
    ``target="probability"`` differentiates ``p_c`` instead (``sigmoid`` or ``softmax`` of the logits: with a
    softmax the other classes' logits enter the gradient). The images of a batch are independent in eval
    mode, so the gradient of ``sum_b y_b^c`` gives every image's own gradient; the classes are looped over,
    re-using one forward graph. Gradients are taken with ``paddle.grad`` and are never accumulated on
    parameters. Works on any layer with a ``[B, C, h, w]`` output, whatever follows it (GAP + Linear or
    flatten + dense layers, as in VGG).
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
