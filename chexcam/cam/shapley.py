"""ShapleyCAM: gradient and Hessian-vector product."""

from __future__ import annotations

import contextlib
from typing import List

import paddle
from paddle import nn

from ..errors import ChexcamError
from ..registry import CAM_METHODS
from .base import BaseGradCAM, Pass


@CAM_METHODS.register("shapleycam")
class ShapleyCAM(BaseGradCAM):
    r"""ShapleyCAM (Cai, "CAMs as Shapley Value-based Explainers", arXiv:2501.06261, 2025).

    A second-order estimate of each channel's Shapley value: with ``g = d y^c / d A`` and ``H`` the Hessian of
    ``y^c`` with respect to ``A``,

        w_k^c = (1 / Z) sum_{i,j} (g - (1/2) H A)^k_{ij}
        L^c   = sum_k w_k^c A^k

    ``H A`` is one Hessian-vector product (``paddle.grad`` of ``g`` with ``grad_outputs=A``, a double backward
    through the layers after ``A``). Where ``y^c`` is linear in ``A`` (the last feature map of a GAP + linear
    head, explaining logits) ``H = 0`` and ShapleyCAM = Grad-CAM; through ReLU, pooling and inference-mode
    batch norm a logit is piecewise linear, so ``H A`` comes from the target's own curvature
    (``target="probability"``: the sigmoid's or softmax's second derivative).

    Paddle's batch-norm kernel has no usable double backward in inference mode (``is_test=True`` is refused,
    and its ``use_global_stats`` branch fails on a null tensor where the second derivative is zero). So during
    this method's forward pass each inference-mode BatchNorm's output is replaced, by a temporary
    forward-post-hook, with the same normalization written as plain tensor ops,
    ``act((x - mean) / sqrt(var + eps) * gamma + beta)`` (:func:`affine_batch_norm`), which has a double
    backward; the outputs agree with the kernel's to float32 rounding, and the hooks are removed afterwards.
    """

    def _capture(self, x):
        with affine_batch_norm(self.model):
            return super()._capture(x)

    def class_maps(self, p: Pass, classes: List[int]) -> paddle.Tensor:
        fd = p.feats.detach()
        out = []
        for c in classes:
            (g,) = paddle.grad(self.class_target(p, c), p.feats, retain_graph=True, create_graph=True,
                               allow_unused=True)
            if g is None:
                raise ChexcamError(f"class {c} does not depend on layer '{p.layer_name}'")
            hvp = None
            if not g.stop_gradient:
                try:
                    (hvp,) = paddle.grad(g, p.feats, grad_outputs=fd, retain_graph=True, allow_unused=True)
                except (RuntimeError, ValueError) as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise ChexcamError(f"shapleycam needs a double backward through the layers after "
                                       f"'{p.layer_name}', which paddle refused: {first}") from None
            w = g.detach() if hvp is None else g.detach() - 0.5 * hvp.detach()
            out.append(self.weighted_sum(fd, w.mean(axis=[2, 3])))
        return paddle.stack(out, axis=1)


_BN_TYPES = (nn.BatchNorm, nn.layer.norm._BatchNormBase)


@contextlib.contextmanager
def affine_batch_norm(model: nn.Layer):
    """For the block, every inference-mode BatchNorm of ``model`` returns its normalization computed with plain
    tensor ops from its input (a forward-post-hook), so a double backward can go through it."""
    handles = []

    def hook(layer, inputs, _output):
        x = inputs[0]
        scale = layer.weight / paddle.sqrt(layer._variance + layer._epsilon)
        shift = layer.bias - layer._mean * scale
        y = x * scale.reshape([1, -1, 1, 1]) + shift.reshape([1, -1, 1, 1])
        act = getattr(layer, "_act", None)
        return getattr(paddle.nn.functional, act)(y) if act else y

    try:
        for lyr in model.sublayers(include_self=True):
            if isinstance(lyr, _BN_TYPES) and not lyr.training:
                layout = getattr(lyr, "_data_layout", None) or getattr(lyr, "_data_format", "NCHW")
                act = getattr(lyr, "_act", None)
                if layout != "NCHW" or lyr.weight is None or lyr.bias is None or (
                        act and not hasattr(paddle.nn.functional, act)):
                    raise ChexcamError(f"shapleycam supports NCHW batch norm with weight and bias and a known "
                                       f"activation; {type(lyr).__name__} has layout {layout}, activation {act!r}")
                handles.append(lyr.register_forward_post_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
