"""Models by name (the registry's built-ins) and from a config, with the one "no weights" guard."""

from __future__ import annotations

import logging
from typing import List

from ..config import Config
from ..errors import ConfigError
from ..registry import MODELS
from ..weights import load_weights

logger = logging.getLogger(__name__)


def create_model(name: str, **kwargs):
    """Build a registered model by name (``list_models()``), e.g. ``create_model("chexnet_densenet121")``."""
    return MODELS.create(name, **kwargs)


def list_models() -> List[str]:
    """Names of all registered models."""
    return MODELS.names()


def require_weights(cfg: Config) -> None:
    """The one guard for tools that need trained weights: ``model.weights`` set, or random weights asked for.

    Raises:
        ConfigError: neither ``model.weights`` nor ``model.allow_random=true``.
    """
    if not cfg.model.weights and not cfg.model.allow_random:
        raise ConfigError(
            "no model.weights given: convert the public CheXNet checkpoint as pretrained/README.md shows (or "
            "train one) and pass -o model.weights=PATH, or -o model.allow_random=true for random weights"
        )
    if not cfg.model.weights:
        logger.warning("model.allow_random=true: random weights, the maps and probabilities are meaningless")


def build_model(cfg: Config):
    """Build the configured model; load ``model.weights`` when the config names a file.

    The returned ``paddle.nn.Layer`` maps ``[B, 3, H, W]`` float32 to logits ``[B, K]``, is in eval mode and
    carries ``labels`` (the class names) and ``cam_layer`` (where CAM hooks attach).
    """
    model = create_model(
        cfg.model.name,
        num_classes=cfg.model.num_classes,
        output_stride=cfg.model.output_stride,
        dropout=cfg.model.dropout,
    )
    model.labels = tuple(cfg.data.labels)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)
    model.eval()
    return model
