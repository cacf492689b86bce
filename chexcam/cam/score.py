r"""Score-CAM and its smoothed (SS-CAM) and integrated (IS-CAM) variants: channel weights from masked forwards.

Every channel ``A^k`` of the hooked layer becomes a mask of the input: upsampled to the input size (bilinear,
half-pixel centres, as every map in chexcam) and min-max normalized, ``H^k = s(Up(A^k))`` (a constant channel
masks everything out). The image times each mask is forwarded once and **scored for every class at once**:
an image costs ``C`` forward passes (``C x num_samples`` for SS-CAM and IS-CAM) whatever the number of
classes, where pytorch-grad-cam and torch-cam forward the ``C`` masked images again for each class. The masked
images are made and forwarded ``batch_size`` at a time, so memory holds one chunk, never all ``C`` masks.

The forwards go through ``forward_fn(batch [n, 3, H, W] float32) -> logits [n, K]`` (numpy): the model's dynamic
graph by default, the Paddle Inference predictor inside :class:`chexcam.Explainer`.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np
import paddle
from paddle import nn

from ..errors import ChexcamError
from ..postprocess import normalize_maps, resize_maps
from ..registry import CAM_METHODS
from .base import BaseCAM, Pass, activate

ForwardFn = Callable[[np.ndarray], np.ndarray]


def model_forward_fn(model: nn.Layer) -> ForwardFn:
    """``forward_fn`` through a Layer's dynamic graph: logits, no gradients (the caller sets eval mode)."""

    def forward(batch: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return model(paddle.to_tensor(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    return forward


def channel_masks(feats: np.ndarray, size) -> np.ndarray:
    """``[n, h, w]`` activations -> ``[n, H, W]`` masks in [0, 1]: bilinear upsampling, then min-max per mask."""
    return normalize_maps(resize_maps(np.asarray(feats, np.float32)[:, None], size), "minmax")[:, 0]


def masked_scores(forward_fn: ForwardFn, x: np.ndarray, feats: np.ndarray, batch_size: int = 32,
                  coefficients: Sequence[float] = (1.0,), noise_std: float = 0.0, seed: int = 0,
                  activation: Optional[str] = None, masks: Optional[np.ndarray] = None) -> np.ndarray:
    """Mean over the samples of the scores of ``x`` masked by each channel: ``[C, K]`` float64.

    For sample ``s`` the input is ``x * (coefficients[s] * H^k + e_{s,k})`` with ``e`` Gaussian noise of
    ``noise_std`` (SS-CAM; drawn with ``numpy.random.default_rng(seed)`` sample by sample, channel by channel,
    so the draws do not depend on ``batch_size``). ``activation`` turns the logits into probabilities
    (``None``: score the logits). ``masks`` (``[C, H, W]``) replaces :func:`channel_masks` (tests against the
    peers' own masks).
    """
    x = np.asarray(x, dtype=np.float32)
    size = x.shape[1:]
    n_ch = len(feats) if masks is None else len(masks)
    rng = np.random.default_rng(int(seed))
    total = None
    for coef in coefficients:
        rows = []
        for i in range(0, n_ch, int(batch_size)):
            m = channel_masks(feats[i:i + batch_size], size) if masks is None else np.asarray(masks[i:i + batch_size],
                                                                                              np.float32)
            m = m * np.float32(coef) if coef != 1.0 else m
            if noise_std > 0:
                m = m + (rng.standard_normal(m.shape) * noise_std).astype(np.float32)
            out = np.asarray(forward_fn(x[None] * m[:, None]), dtype=np.float64)
            rows.append(out if activation is None else activate(out, activation).astype(np.float64))
        scores = np.concatenate(rows)
        total = scores if total is None else total + scores
    return total / len(coefficients)


def softmax_channels(scores: np.ndarray) -> np.ndarray:
    """``[C, K]`` scores -> weights, a softmax over the channels ``C`` for each class (float64)."""
    e = np.exp(scores - scores.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


class _ScoreBase(BaseCAM):
    """Score-CAM's machinery; a subclass says which coefficients and noise its samples use."""

    supports_probability = True
    default_target = "probability"
    DEFAULTS = {"batch_size": 32}
    #: the forwards of this method can run on the Explainer's predictor (``forward_fn``)
    serves_forwards = True

    def __init__(self, model: nn.Layer, target_layer=None, forward_fn: Optional[ForwardFn] = None, **options):
        super().__init__(model, target_layer, **options)
        if int(self.options["batch_size"]) < 1:
            raise ChexcamError(f"{type(self).__name__} batch_size must be >= 1, got {self.options['batch_size']}")
        self.forward_fn = forward_fn

    def sampling(self):
        """``(coefficients, noise_std, seed)`` of the samples."""
        return (1.0,), 0.0, 0

    def class_maps(self, p: Pass, classes: List[int]) -> paddle.Tensor:
        fwd = self.forward_fn or model_forward_fn(self.model)
        coefs, std, seed = self.sampling()
        act = None if p.target == "logit" else p.activation
        feats, x = p.feats.numpy(), p.x.numpy()
        # [B, C, K']: one set of masked forwards per image, scored for every class; the baseline X_b
        # shifts each class's scores by a constant and cancels in the softmax over channels
        weights = np.stack([softmax_channels(masked_scores(fwd, x[b], feats[b], int(self.options["batch_size"]),
                                                           coefs, std, seed, act)[:, classes])
                            for b in range(len(feats))]).astype(np.float32)
        f = paddle.to_tensor(feats)
        return paddle.stack([self.weighted_sum(f, paddle.to_tensor(weights[:, :, i])) for i in range(len(classes))],
                            axis=1)


@CAM_METHODS.register("scorecam")
class ScoreCAM(_ScoreBase):
    r"""Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks", CVPR Workshops 2020; Algorithm 1).

        H^k      = s(Up(A^k))                         (mask in [0, 1])
        S_k^c    = f^c(X o H^k) - f^c(X_b)
        alpha^c  = softmax_k(S^c)
        L^c      = sum_k alpha_k^c A^k                (the paper's ReLU: relu=True)

    ``f^c`` is the class probability (``target="probability"``, the default: the paper scores the softmax
    output, chexcam the model's own activation, sigmoid per finding) or the logit (``target="logit"``, which
    pytorch-grad-cam and torch-cam score). The baseline ``f^c(X_b)`` shifts every ``S_k^c`` of a class by
    the same amount and cancels in the softmax. pytorch-grad-cam also upsamples with ``align_corners=True``
    and torch-cam normalizes ``A^k`` before upsampling; chexcam upsamples, then normalizes, as the paper.
    """


@CAM_METHODS.register("sscam")
class SSCAM(_ScoreBase):
    r"""SS-CAM (Wang, Naidu et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization",
    arXiv:2006.14255, 2020): Score-CAM with each mask smoothed by Gaussian noise, ``N = num_samples`` draws.

        S_k^c    = (1 / N) sum_s f^c(X o (H^k + e_s)),   e_s ~ N(0, std^2) per pixel
        alpha^c  = softmax_k(S^c),   L^c = sum_k alpha_k^c A^k

    Noise on the normalized masks as torch-cam's ``SSCAM`` (``num_samples=35``, ``std=2.0`` there too);
    seeded, the same draws for every image.
    """

    DEFAULTS = {"batch_size": 32, "num_samples": 35, "std": 2.0, "seed": 0}

    def sampling(self):
        n = int(self.options["num_samples"])
        if n < 1 or not float(self.options["std"]) >= 0:
            raise ChexcamError(f"sscam needs num_samples >= 1 and std >= 0, got {n} and {self.options['std']}")
        return (1.0,) * n, float(self.options["std"]), int(self.options["seed"])


@CAM_METHODS.register("iscam")
class ISCAM(_ScoreBase):
    r"""IS-CAM (Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations",
    arXiv:2010.03023, 2020): the scores integrated along the path from a black mask to ``H^k``.

        S_k^c    = (1 / N) sum_{i=1..N} f^c(X o (i / N) H^k)
        alpha^c  = softmax_k(S^c),   L^c = sum_k alpha_k^c A^k

    torch-cam's ``ISCAM`` scales sample ``i`` by the cumulative ``sum_{j<=i} j / N`` instead of ``i / N``
    (up to ``(N + 1) / 2``, past the mask itself).
    """

    DEFAULTS = {"batch_size": 32, "steps": 10}

    def sampling(self):
        n = int(self.options["steps"])
        if n < 1:
            raise ChexcamError(f"iscam steps must be >= 1, got {n}")
        return tuple((i + 1) / n for i in range(n)), 0.0, 0
