"""Class Activation Mapping for a GAP + linear head."""

from __future__ import annotations

from typing import List

import paddle
from paddle import nn

from ..errors import ChexcamError
from ..registry import CAM_METHODS
from .base import BaseCAM, Pass


def cam_maps(feats: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
    """``maps[b, k] = sum_c weight[c, k] * feats[b, c]``: ``[B, C, h, w]`` x ``[C, K]`` -> ``[B, K, h, w]``.

    The one implementation of the CAM weighting, used by :class:`CAM` (hook) and by
    :class:`chexcam.cam.graph.CamGraph` (export). One GEMM per image (``[K, C] x [C, h*w]``), no einsum, so
    the exported graph converts to ONNX as it is.
    """
    shape = paddle.shape(feats)
    flat = paddle.matmul(weight, paddle.flatten(feats, start_axis=2), transpose_x=True)
    return paddle.reshape(flat, [shape[0], -1, shape[2], shape[3]])


def linear_head(model: nn.Layer) -> nn.Linear:
    """The model's ``head`` Linear layer (weight ``[C, K]``), which CAM needs."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ChexcamError(
            f"method 'cam' needs a global-average-pool + Linear 'head' ({type(model).__name__} has none); "
            "use method='gradcam' instead"
        )
    return head


@CAM_METHODS.register("cam")
class CAM(BaseCAM):
    r"""Class Activation Map (Zhou et al., "Learning Deep Features for Discriminative Localization",
    CVPR 2016).

    With ``f_k(x, y)`` the last feature map (after the final norm + ReLU) and ``w_{c,k}`` the head
    weight of class ``c``:

        M_c(x, y) = sum_k w_{c,k} f_k(x, y)

    computed for all selected classes at once by :func:`cam_maps` (``einsum("bchw,ck->bkhw", f, W)`` as one
    GEMM per image). Because the head sees
    the global average of ``f``, the raw map is in logit units: ``mean_{x,y} M_c + b_c = logit_c``.
    """

    def __init__(self, model: nn.Layer, target_layer=None, **options):
        super().__init__(model, target_layer, **options)
        self.head = linear_head(model)

    def class_maps(self, p: Pass, classes: List[int]) -> paddle.Tensor:
        feats = p.feats
        weight = self.head.weight
        if feats.shape[1] != weight.shape[0]:
            raise ChexcamError(
                f"layer '{p.layer_name}' has {feats.shape[1]} channels but the head expects "
                f"{weight.shape[0]}; CAM must hook the layer that feeds global pooling"
            )
        if len(classes) != weight.shape[1]:
            weight = paddle.index_select(weight, paddle.to_tensor(classes, dtype="int64"), axis=1)
        if self.eigen_smooth:  # the first component of w_{c,k} f_k instead of the sum over k
            return paddle.stack([self.reduce(feats * weight[:, i].reshape([1, -1, 1, 1]))
                                 for i in range(weight.shape[1])], axis=1)
        return cam_maps(feats, weight)
