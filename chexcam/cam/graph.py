"""The CAM as part of a hook-free forward pass, for export: ``x -> (probabilities or logits, raw CAMs)``.

The serving runtime (:mod:`chexcam.serving`) traces :class:`CamGraph` into a static program; the CAM in it
is :func:`chexcam.cam.cam.cam_maps`, the same function the hook-based :class:`chexcam.cam.CAM` calls, so
CAM is written once.
"""

from __future__ import annotations

from typing import Optional

import paddle
import paddle.nn.functional as F
from paddle import nn

from ..errors import ChexcamError
from ..models.classifier import GapLinearClassifier
from .cam import cam_maps

OUTPUTS = ("probs", "logits")


def export_blocker(model: nn.Layer) -> Optional[str]:
    """Why ``model`` + CAM cannot be traced into one static graph that equals its dynamic graph, or ``None``.

    Exportable: a :class:`~chexcam.models.classifier.GapLinearClassifier` whose ``forward``,
    ``forward_features`` and ``forward_head`` are the class's own, explained at its ``cam_layer`` (the layer
    that feeds global pooling), with no forward hooks (they would not run in the exported graph).
    """
    if not isinstance(model, GapLinearClassifier) or not isinstance(getattr(model, "head", None), nn.Linear):
        return f"{type(model).__name__} is not a chexcam GAP + Linear classifier"
    for attr in ("forward", "forward_features", "forward_head"):
        if getattr(type(model), attr) is not getattr(GapLinearClassifier, attr):
            return f"{type(model).__name__} overrides {attr}"
    if model.cam_layer != model.features_layer:
        return (f"cam_layer '{model.cam_layer}' is not the layer that feeds global pooling "
                f"('{model.features_layer}')")
    for name, lyr in [("", model), *model.named_sublayers()]:
        if lyr._forward_pre_hooks or lyr._forward_post_hooks:
            return f"layer '{name or type(model).__name__}' has forward hooks (they would not run in an exported graph)"
    return None


class CamGraph(nn.Layer):
    r"""``x -> (sigmoid(logits) or logits, maps)`` with ``maps = cam_maps(f, W)`` (raw CAMs, logit units).

    ``f`` is the model's final feature map (``forward_features``: after the last norm + ReLU) and ``W`` the
    head weight ``[C, K]``: exactly what :class:`chexcam.cam.CAM` computes with a hook, here a plain matmul
    in the forward pass, so a traced program holds both outputs.
    """

    def __init__(self, model: nn.Layer, output: str = "probs"):
        super().__init__()
        if output not in OUTPUTS:
            raise ChexcamError(f"unknown export output '{output}'; expected one of {', '.join(OUTPUTS)}")
        why = export_blocker(model)
        if why:
            raise ChexcamError(f"cannot export {type(model).__name__} with its CAM: {why}")
        self.model = model
        self.output = output

    def forward(self, x: paddle.Tensor):
        feats = self.model.forward_features(x)
        logits = self.model.forward_head(feats)
        maps = cam_maps(feats, self.model.head.weight)
        return (F.sigmoid(logits) if self.output == "probs" else logits), maps
