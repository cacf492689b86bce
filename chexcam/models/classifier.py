"""Backbone + global average pooling + ``Linear`` head, returning logits.

The model contract follows timm: ``forward_features`` -> ``[B, C, h, w]``, ``forward_head`` ->
``[B, K]`` logits, attributes ``num_features`` and ``num_classes``. There is no sigmoid in the Layer;
it lives in ``BCEWithLogitsLoss`` and in prediction. ``cam_layer`` names the sublayer whose output is
the feature map that CAM weights by ``head.weight``.
"""

from __future__ import annotations

import paddle
from paddle import nn

from ..registry import register_model
from .backbone import DenseNetFeatures


class GapLinearClassifier(nn.Layer):
    """``logits = W^T GAP(f(x)) + b`` with ``head.weight`` of shape ``[C, K]`` (paddle's Linear layout)."""

    def __init__(self, backbone: nn.Layer, num_features: int, num_classes: int, cam_layer: str):
        super().__init__()
        self.backbone = backbone
        self.num_features = int(num_features)
        self.num_classes = int(num_classes)
        #: the sublayer whose output ``forward_features`` returns (fixed); ``cam_layer`` starts there and may
        #: be pointed elsewhere by a user, which the exported CAM graph then refuses to stand in for
        self.features_layer = cam_layer
        self.cam_layer = cam_layer
        self.global_pool = nn.AdaptiveAvgPool2D(1)
        self.head = nn.Linear(self.num_features, self.num_classes)

    @property
    def output_stride(self) -> int:
        return getattr(self.backbone, "output_stride", 32)

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.backbone(x)

    def forward_head(self, f: paddle.Tensor) -> paddle.Tensor:
        # reshape, not flatten: paddle's flatten has no double backward (ShapleyCAM's Hessian-vector product)
        return self.head(paddle.reshape(self.global_pool(f), [0, -1]))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.forward_head(self.forward_features(x))


def _chexnet(depth: int, num_classes: int = 14, output_stride: int = 32, dropout: float = 0.0):
    backbone = DenseNetFeatures(depth=depth, output_stride=output_stride, dropout=dropout)
    return GapLinearClassifier(backbone, backbone.num_features, num_classes, cam_layer="backbone.batch_norm")


@register_model
def chexnet_densenet121(num_classes: int = 14, output_stride: int = 32, dropout: float = 0.0):
    """CheXNet: DenseNet121 (1024 features) + Linear head (Rajpurkar et al. 2017)."""
    return _chexnet(121, num_classes, output_stride, dropout)


@register_model
def chexnet_densenet169(num_classes: int = 14, output_stride: int = 32, dropout: float = 0.0):
    """DenseNet169 (1664 features) + Linear head."""
    return _chexnet(169, num_classes, output_stride, dropout)


@register_model
def chexnet_densenet201(num_classes: int = 14, output_stride: int = 32, dropout: float = 0.0):
    """DenseNet201 (1920 features) + Linear head."""
    return _chexnet(201, num_classes, output_stride, dropout)
