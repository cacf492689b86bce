"""Shared fixtures: tiny seeded inputs, models built from the shipped configs, the shared sample data."""

import os
import warnings

import numpy as np
import pytest

warnings.filterwarnings("ignore", message="No ccache found")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.abspath(os.path.join(ROOT, "..", "shared", "data"))
CONFIGS = sorted(os.path.join(ROOT, "configs", f) for f in os.listdir(os.path.join(ROOT, "configs"))
                 if f.endswith(".yaml"))


def shared_path(*parts):
    """Path under ../shared/data, or skip the test when it is absent (fresh clones without it)."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"needs ../shared/data ({os.path.join(*parts)} not found beside the repository)")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def chest_cfg():
    import chexcam

    return chexcam.load_config(os.path.join(ROOT, "configs", "chestxray14.yaml"), ["model.allow_random=true"])


@pytest.fixture(scope="session")
def chest_model(chest_cfg):
    import paddle

    import chexcam

    paddle.seed(0)
    return chexcam.build_model(chest_cfg)
