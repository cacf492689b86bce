"""chexcam: CheXNet-style classifiers and class activation maps for every class at once, in PaddlePaddle.

Public API::

    cfg = chexcam.load_config("configs/chestxray14.yaml", ["model.allow_random=true"])
    model = chexcam.build_model(cfg)
    probs, maps = chexcam.explain(model, x)          # x: [B, 3, H, W] float32, preprocessed
"""

from __future__ import annotations

import logging
import warnings

__version__ = "0.1.0"

# paddle warns about a missing ccache on import; it is irrelevant to users of a wheel
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

from .config import Config, load_config, save_config  # noqa: E402
from .errors import ChexcamError, ConfigError  # noqa: E402
from .labels import CHESTXRAY14_LABELS, MALARIA_LABELS  # noqa: E402
from .registry import create_model, list_models, register_model  # noqa: E402

logger = logging.getLogger(__name__)


def build_model(cfg: Config):
    """Build the configured model; load ``model.weights`` when the config names a file.

    The returned ``paddle.nn.Layer`` maps ``[B, 3, H, W]`` float32 to logits ``[B, K]`` and carries
    ``labels`` (the class names) and ``cam_layer`` (where CAM hooks attach).
    """
    from . import weights as _weights

    model = create_model(
        cfg.model.name,
        num_classes=cfg.model.num_classes,
        output_stride=cfg.model.output_stride,
        dropout=cfg.model.dropout,
    )
    model.labels = tuple(cfg.data.labels)
    if cfg.model.weights:
        _weights.load_weights(model, cfg.model.weights)
    model.eval()
    return model


def explain(model, x, method="cam", classes=None, normalize=True, upsample=True, relu=False, layer=None):
    """See :func:`chexcam.cam.explain`."""
    from .cam import explain as _explain

    return _explain(model, x, method=method, classes=classes, normalize=normalize,
                    upsample=upsample, relu=relu, layer=layer)


__all__ = [
    "__version__", "Config", "load_config", "save_config", "build_model", "explain",
    "register_model", "create_model", "list_models", "ChexcamError", "ConfigError",
    "CHESTXRAY14_LABELS", "MALARIA_LABELS",
]
