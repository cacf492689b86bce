"""chexcam: CheXNet-style classifiers and class activation maps for every class at once, in PaddlePaddle.

Public API::

    cfg = chexcam.load_config("configs/chestxray14.yaml", ["model.allow_random=true"])
    model = chexcam.build_model(cfg)
    probs, maps = chexcam.explain(model, x)          # the reference: dynamic graph, nothing cached
    ex = chexcam.Explainer(model)                    # the fast engine: a checked snapshot of the model
    probs, maps = ex(x)

This module only gathers names; nothing below it imports it.
"""

from __future__ import annotations

import warnings

# paddle warns about a missing ccache on import; it is irrelevant to users of a wheel
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

from .config import Config, load_config, save_config  # noqa: E402
from .errors import ChexcamError, ConfigError  # noqa: E402
from .labels import CHESTXRAY14_LABELS, MALARIA_LABELS  # noqa: E402
from .version import __version__  # noqa: E402

#: names served lazily (PEP 562), so ``import chexcam`` and a tool's ``--help`` or config error do not
#: pay for importing paddle
_LAZY = {
    "explain": "chexcam.cam", "list_cam_methods": "chexcam.cam",
    "build_model": "chexcam.models", "create_model": "chexcam.models", "list_models": "chexcam.models",
    "register_model": "chexcam.registry", "Explainer": "chexcam.serving",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chexcam' has no attribute '{name}'")


__all__ = [
    "__version__", "Config", "load_config", "save_config", "build_model", "explain", "Explainer",
    "list_cam_methods", "register_model", "create_model", "list_models", "ChexcamError", "ConfigError",
    "CHESTXRAY14_LABELS", "MALARIA_LABELS",
]
