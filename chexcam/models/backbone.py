"""DenseNet feature extractors built on ``paddle.vision.models.DenseNet``.

The parameter names are paddle.vision's own, so its checkpoints and converted CheXNet weights load
directly. ``output_stride`` trades map resolution for compute without adding parameters: the average
pooling of the last (16), last two (8) or all three (4) transition layers is replaced by an identity, so a
224 px input gives 14x14, 28x28 or 56x56 feature maps instead of 7x7, and the same weights still load.
"""

from __future__ import annotations

import paddle
from paddle import nn
from paddle.vision.models import DenseNet

_DEPTHS = (121, 161, 169, 201, 264)
#: output stride -> how many of the three transition poolings (from the last) become identities
POOLINGS_REMOVED = {32: 0, 16: 1, 8: 2, 4: 3}


class DenseNetFeatures(DenseNet):
    """paddle.vision DenseNet without pooling and classifier; ``forward`` returns ``[B, C, h, w]``.

    The last layer, ``batch_norm`` (BatchNorm with a fused ReLU), is where CAM hooks attach: its output
    is the non-negative feature map that global average pooling turns into the head's input.
    """

    def __init__(self, depth: int = 121, output_stride: int = 32, dropout: float = 0.0):
        if depth not in _DEPTHS:
            raise ValueError(f"DenseNet depth must be one of {_DEPTHS}, got {depth}")
        if output_stride not in POOLINGS_REMOVED:
            raise ValueError(f"output_stride must be 4, 8, 16 or 32, got {output_stride}")
        super().__init__(layers=depth, dropout=dropout, num_classes=0, with_pool=False)
        self.depth = depth
        self.output_stride = output_stride
        self.num_features = self.batch_norm._num_channels if hasattr(self.batch_norm, "_num_channels") \
            else int(self.batch_norm.weight.shape[0])
        for tr in self.transition_func_list[len(self.transition_func_list) - POOLINGS_REMOVED[output_stride]:]:
            tr.pool2d_avg = nn.Identity()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self.conv1_func(x)
        y = self.pool2d_max(y)
        for i in range(len(self.block_config)):
            y = self.dense_block_func_list[i](y)
            if i != len(self.block_config) - 1:
                y = self.transition_func_list[i](y)
        return self.batch_norm(y)
