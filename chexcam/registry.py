"""Name -> factory registries, so configs name a model, dataset or CAM method instead of if-chains."""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from .errors import ConfigError
from .utils import did_you_mean


class Registry:
    """A small name -> callable map with a helpful error for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None):
        """Decorator: ``@REG.register()`` uses the function or class name."""

        def deco(obj):
            key = name or obj.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is already registered")
            self._entries[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} '{name}' (known: {', '.join(sorted(self._entries))})"
                              f"{did_you_mean(name, self._entries)}")
        return self._entries[name]

    def create(self, name: str, **kwargs):
        return self.get(name)(**kwargs)

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


MODELS = Registry("model")
DATASETS = Registry("dataset")
CAM_METHODS = Registry("CAM method")


def register_model(fn=None, *, name: str | None = None):
    """Register a model factory ``fn(num_classes, output_stride, **kw) -> paddle.nn.Layer``."""
    if fn is None:
        return MODELS.register(name)
    return MODELS.register(name)(fn)
