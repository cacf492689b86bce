"""Small DenseNets from paddle.vision's own building blocks, for small data and fast tests.

DenseNet121 from random initialisation needs far more than the 300 bundled malaria cells and far more
than a few CPU minutes; a four-block DenseNet with a few layers per block learns the stain texture of a
parasite in about a minute on two cores. It keeps the contract of the CheXNet models exactly: the same
:class:`~chexcam.models.classifier.GapLinearClassifier` head, ``cam_layer = "backbone.batch_norm"``
(BatchNorm with a fused ReLU, non-negative maps), ``output_stride`` 4/8/16/32 by replacing the last
transition poolings with identities, so CAM, Grad-CAM and training see no difference.
"""

from __future__ import annotations

from typing import Sequence

import paddle
from paddle import nn
from paddle.vision.models.densenet import ConvBNLayer, DenseBlock, TransitionLayer

from ..registry import register_model
from .backbone import POOLINGS_REMOVED
from .classifier import GapLinearClassifier


class SmallDenseNetFeatures(nn.Layer):
    """Stem (3x3 conv stride 2 + 3x3 max-pool stride 2), four dense blocks, three transitions, BN+ReLU.

    The native output stride is 32 like DenseNet121; ``output_stride`` 16, 8 or 4 removes the pooling of
    the last one, two or all three transitions (4: the stem's stride alone, 24x24 maps at 96 px).
    """

    def __init__(self, block_config: Sequence[int] = (2, 3, 4, 3), growth_rate: int = 12,
                 init_features: int = 24, bn_size: int = 4, output_stride: int = 32, dropout: float = 0.0):
        super().__init__()
        if output_stride not in POOLINGS_REMOVED:
            raise ValueError(f"output_stride must be 4, 8, 16 or 32, got {output_stride}")
        if len(block_config) != 4:
            raise ValueError(f"block_config needs 4 blocks, got {list(block_config)}")
        self.output_stride = output_stride
        self.block_config = tuple(block_config)
        self.conv1_func = ConvBNLayer(3, init_features, filter_size=3, stride=2, pad=1, act="relu")
        self.pool2d_max = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        self.dense_block_func_list = nn.LayerList()
        self.transition_func_list = nn.LayerList()
        ch = init_features
        for i, n in enumerate(self.block_config):
            self.dense_block_func_list.append(
                DenseBlock(ch, n, bn_size, growth_rate, dropout, name=f"conv{i + 2}"))
            ch += n * growth_rate
            if i != len(self.block_config) - 1:
                self.transition_func_list.append(TransitionLayer(ch, ch // 2))
                ch //= 2
        self.batch_norm = nn.BatchNorm(ch, act="relu")
        self.num_features = ch
        for tr in self.transition_func_list[len(self.transition_func_list) - POOLINGS_REMOVED[output_stride]:]:
            tr.pool2d_avg = nn.Identity()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self.pool2d_max(self.conv1_func(x))
        for i in range(len(self.block_config)):
            y = self.dense_block_func_list[i](y)
            if i != len(self.block_config) - 1:
                y = self.transition_func_list[i](y)
        return self.batch_norm(y)


def _small(block_config, growth_rate, init_features, num_classes, output_stride, dropout):
    backbone = SmallDenseNetFeatures(block_config, growth_rate, init_features,
                                     output_stride=output_stride, dropout=dropout)
    return GapLinearClassifier(backbone, backbone.num_features, num_classes, cam_layer="backbone.batch_norm")


@register_model
def densenet_small(num_classes: int = 1, output_stride: int = 32, dropout: float = 0.0):
    """Four blocks of 2/3/4/3 layers, growth 12 (~100k parameters): the bundled malaria demo's model."""
    return _small((2, 3, 4, 3), 12, 24, num_classes, output_stride, dropout)


@register_model
def densenet_tiny(num_classes: int = 1, output_stride: int = 32, dropout: float = 0.0):
    """One layer per block, growth 4 (a few thousand parameters): smoke runs and tests."""
    return _small((1, 1, 1, 1), 4, 8, num_classes, output_stride, dropout)
