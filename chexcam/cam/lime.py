r"""LIME for images, all classes from one set of perturbations.

Ribeiro, Singh and Guestrin, "'Why Should I Trust You?': Explaining the Predictions of Any Classifier",
KDD 2016, computed as the reference ``lime`` package's ``LimeImageExplainer`` computes it:

1. **Superpixels** of the image: scikit-image ``quickshift`` with LIME's defaults (``kernel_size=4``,
   ``max_dist=200``, ``ratio=0.2``) or ``slic`` (``n_segments``, ``compactness``), numbered ``0 .. S-1``.
2. **Perturbations** ``Z`` in ``{0, 1}^{N x S}``: row 0 all ones (the image itself), the other rows uniform
   random bits drawn as lime draws them (``numpy.random.RandomState(seed).randint(0, 2, N * S)``).
3. **Forward passes**: row ``z`` becomes the image with every superpixel ``s`` where ``z_s = 0`` painted in
   the hide colour (default: the image's mean colour); the ``N`` images go through ``predict_fn`` in chunks of
   ``batch_size``, one batched forward per chunk. This is the only model cost, and all classes share it. A row
   drawn twice is one image: each distinct row is forwarded once (quickshift cuts a 96 px cell into 5-8
   superpixels, so 1000 rows hold at most 2^S distinct images; with 50+ superpixels rows never repeat).
4. **Sample weights** ``pi(z) = sqrt(exp(-d(z, 1)^2 / w^2))`` with ``d`` the cosine distance between ``z`` and
   the all-ones row and ``w = 0.25`` (lime's exponential kernel).
5. **One regression per class on the same samples**: a ridge regression (scikit-learn ``Ridge``, ``alpha=1``,
   with intercept, lime's default) of the class probability ``p_k(z)`` on ``Z`` weighted by ``pi``, solved for
   all explained classes at once (one multi-output ``Ridge``: the same normal equations, one right-hand side
   per class). Its coefficient ``beta_{k,s}`` is the change of ``p_k`` when superpixel ``s`` is shown.

The map of class ``k`` is ``M_k(x, y) = beta_{k, segment(x, y)}``: at input resolution, in probability units.
Multi-label models explain each sigmoid, softmax models each softmax output (``activation``).

Differences from lime's defaults, on purpose: ``hide_color`` defaults to the image's mean colour (lime's
``hide_color=None`` paints each superpixel in its own mean colour: ``hide_color="segment"`` here), and all
features are kept (lime's ``num_features=100000`` keeps them all too; its "highest weights" pre-selection is
then a permutation that does not change the coefficients). NumPy, scikit-image and scikit-learn only; the model
is reached through ``predict_fn(batch [n, 3, H, W] float32) -> probabilities [n, K]``:
:func:`chexcam.explain` passes the dynamic graph, :class:`chexcam.Explainer` its Paddle Inference predictor.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
from paddle import nn

from ..errors import ChexcamError
from ..labels import IMAGENET_MEAN, IMAGENET_STD
from ..postprocess import normalize_mode, postprocess, upsample_size
from ..registry import CAM_METHODS
from ..utils import did_you_mean
from .base import ClassSpec, activate, check_activation, check_target, class_table, eval_mode, to_tensor

PredictFn = Callable[[np.ndarray], np.ndarray]
SEGMENTATIONS = ("quickshift", "slic")
#: LIME's options and their defaults (``explain(model, x, method="lime", **options)``)
DEFAULTS: Dict[str, object] = {
    "num_samples": 1000,        # perturbed images per image (row 0 is the image itself)
    "segmentation": "quickshift",  # quickshift | slic
    "kernel_size": 4,           # quickshift: Gaussian kernel width, px (LIME's default)
    "max_dist": 200,            # quickshift: cut-off distance between merged points (LIME's default)
    "ratio": 0.2,               # quickshift: colour vs space balance, 0..1 (LIME's default)
    "n_segments": 50,           # slic: about this many superpixels
    "compactness": 10.0,        # slic: colour vs space balance
    "hide_color": "mean",       # "mean" (image mean colour), "segment" (each superpixel's own mean, lime's
                                # hide_color=None) or 1 or 3 numbers in the model's input space
    "kernel_width": 0.25,       # width of the exponential kernel on the cosine distance (LIME's default)
    "alpha": 1.0,               # ridge penalty (LIME's default)
    "batch_size": 50,           # perturbed images per forward pass
    "seed": 0,                  # perturbations and quickshift's tie-breaking noise
    "mean": IMAGENET_MEAN,      # the input normalization, undone (x * std + mean) to segment the RGB image
    "std": IMAGENET_STD,
}


def check_options(options: Dict[str, object]) -> Dict[str, object]:
    """LIME's options with the defaults filled in; an unknown name or a bad value is a one-line error."""
    unknown = [k for k in options if k not in DEFAULTS]
    if unknown:
        raise ChexcamError(f"unknown LIME option '{unknown[0]}'{did_you_mean(unknown[0], DEFAULTS)} "
                           f"(known: {', '.join(DEFAULTS)})")
    out = {**DEFAULTS, **options}
    if out["segmentation"] not in SEGMENTATIONS:
        raise ChexcamError(f"unknown LIME segmentation {out['segmentation']!r}; expected one of {', '.join(SEGMENTATIONS)}")
    for key in ("num_samples", "batch_size"):
        if int(out[key]) < 1:
            raise ChexcamError(f"LIME option {key} must be >= 1, got {out[key]}")
    if float(out["kernel_width"]) <= 0:
        raise ChexcamError(f"LIME option kernel_width must be > 0, got {out['kernel_width']}")
    return out


# ---------------------------------------------------------------------------------------------
# the steps


def rgb_image(x: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """A normalized ``[3, H, W]`` input -> the ``[H, W, 3]`` RGB image in [0, 1] that superpixels are cut from."""
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return np.clip(np.asarray(x, dtype=np.float32) * s + m, 0.0, 1.0).transpose(1, 2, 0)


def segment(image: np.ndarray, segmentation: str = "quickshift", kernel_size: float = 4, max_dist: float = 200,
            ratio: float = 0.2, n_segments: int = 50, compactness: float = 10.0, seed: int = 0) -> np.ndarray:
    """Superpixels of an ``[H, W, 3]`` RGB image in [0, 1] (or uint8): ``int64 [H, W]`` labels ``0 .. S-1``.

    ``quickshift`` with LIME's defaults, or ``slic``. Labels are renumbered consecutively from 0 in row-major
    order of first appearance (the column order of the perturbation matrix).
    """
    from skimage.segmentation import quickshift, slic

    if segmentation == "quickshift":
        labels = quickshift(image, kernel_size=kernel_size, max_dist=max_dist, ratio=ratio, rng=int(seed))
    elif segmentation == "slic":
        labels = slic(image, n_segments=int(n_segments), compactness=float(compactness), start_label=0,
                      channel_axis=-1)
    else:
        raise ChexcamError(f"unknown LIME segmentation {segmentation!r}; expected one of {', '.join(SEGMENTATIONS)}")
    _, first, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse].reshape(labels.shape)


def perturbation_matrix(num_samples: int, num_segments: int, seed: int = 0) -> np.ndarray:
    """``{0, 1}`` ``int64 [num_samples, num_segments]``: row 0 all ones, the rest random bits (lime's draw)."""
    data = np.random.RandomState(seed).randint(0, 2, num_samples * num_segments).reshape(num_samples, num_segments)
    data[0, :] = 1
    return data


def hidden_image(x: np.ndarray, segments: np.ndarray, hide_color: Union[str, float, Sequence[float]] = "mean") -> np.ndarray:
    """The ``[3, H, W]`` image a switched-off superpixel shows (in the model's input space)."""
    x = np.asarray(x, dtype=np.float32)
    if isinstance(hide_color, str):
        if hide_color == "mean":
            return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).astype(np.float32)
        if hide_color == "segment":
            flat = segments.ravel()
            n = int(flat.max()) + 1
            counts = np.bincount(flat, minlength=n).astype(np.float64)
            means = np.stack([np.bincount(flat, weights=c.ravel().astype(np.float64), minlength=n) / counts for c in x])
            return means[:, segments].astype(np.float32)
        raise ChexcamError(f"unknown LIME hide_color {hide_color!r}; expected 'mean', 'segment' or numbers")
    value = np.asarray(hide_color, dtype=np.float32).reshape(-1)
    if value.size not in (1, 3):
        raise ChexcamError(f"LIME hide_color must be 'mean', 'segment', one number or three, got {hide_color!r}")
    return np.broadcast_to(value.reshape(-1, 1, 1), x.shape).astype(np.float32)


def perturbed_images(x: np.ndarray, hidden: np.ndarray, segments: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``[n, 3, H, W]``: image ``i`` shows ``x`` where ``rows[i, segment] == 1`` and ``hidden`` elsewhere."""
    keep = np.asarray(rows, dtype=bool)[:, segments]  # [n, H, W]
    return np.where(keep[:, None], x[None], hidden[None]).astype(np.float32, copy=False)


def kernel_weights(data: np.ndarray, kernel_width: float = 0.25) -> np.ndarray:
    """LIME's sample weights: ``sqrt(exp(-d^2 / w^2))``, ``d`` the cosine distance of each row to row 0."""
    from sklearn.metrics import pairwise_distances

    d = pairwise_distances(data, data[0].reshape(1, -1), metric="cosine").ravel()
    return np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))


def fit_local_models(data: np.ndarray, targets: np.ndarray, weights: np.ndarray, alpha: float = 1.0
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per column ``k`` of ``targets [N, K]``: a weighted ridge regression of it on ``data [N, S]``.

    Returns ``coef [K, S]``, ``intercept [K]``, ``score [K]`` (weighted R^2, as lime's ``score``) and
    ``local_pred [K]`` (the fit at row 0, the image itself).
    """
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    x = np.asarray(data, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64).reshape(len(x), -1)
    reg = Ridge(alpha=float(alpha), fit_intercept=True).fit(x, y, sample_weight=weights)
    coef = np.asarray(reg.coef_, dtype=np.float64).reshape(y.shape[1], x.shape[1])
    intercept = np.asarray(reg.intercept_, dtype=np.float64).reshape(y.shape[1])
    pred = reg.predict(x).reshape(y.shape)
    score = np.atleast_1d(r2_score(y, pred, sample_weight=weights, multioutput="raw_values"))
    return coef, intercept, score, pred[0]


# ---------------------------------------------------------------------------------------------
# one image, a batch


def superpixel_maps(weights: List[np.ndarray], segments: np.ndarray) -> np.ndarray:
    """``[B, K, H, W]`` maps from per-image ``[K, S]`` weights and ``[B, H, W]`` segments."""
    return np.stack([np.asarray(w)[:, s] for w, s in zip(weights, segments)]).astype(np.float32)



class LimeResult(tuple):
    """What LIME returns: unpacks as ``probs, maps = result`` like every method, and carries the rest.

    Attributes:
        probs: ``[B, K]`` probabilities of the unperturbed images.
        maps: ``[B, K', H', W']`` maps (raw: each pixel its superpixel's weight, probability units; or
            post-processed by ``normalize``/``upsample``/``relu`` where :func:`chexcam.explain` was asked to).
        segments: ``int64 [B, H, W]`` superpixel labels at input resolution (``0 .. S_b - 1``).
        weights: per image ``[K', S_b]`` ridge coefficients (probability per superpixel shown).
        intercept, score, local_pred: ``[B, K']`` the regression's intercept, weighted R^2 and fit at the image.
        classes: ``int64 [B, K']`` the head index of every map.
        timing: seconds spent in ``predict_fn`` (``"forward"``) and in all of LIME (``"total"``), and the number
            of images that went through ``predict_fn`` (``"images"``: distinct perturbations only).
    """

    def __new__(cls, probs, maps, segments, weights, intercept, score, local_pred, classes, timing):
        self = super().__new__(cls, (probs, maps))
        self.segments, self.weights = segments, weights
        self.intercept, self.score, self.local_pred = intercept, score, local_pred
        self.classes, self.timing = classes, timing
        return self

    @property
    def probs(self) -> np.ndarray:
        return self[0]

    @property
    def maps(self) -> np.ndarray:
        return self[1]

    def with_maps(self, maps: np.ndarray) -> "LimeResult":
        """The same result with post-processed maps."""
        return LimeResult(self.probs, maps, self.segments, self.weights, self.intercept, self.score,
                          self.local_pred, self.classes, self.timing)

    def top_superpixels(self, image: int = 0, k: int = 0, num: int = 5, positive_only: bool = True) -> np.ndarray:
        """Labels of the ``num`` superpixels with the largest weight for map ``k`` of image ``image`` (only
        positive weights when ``positive_only``), strongest first."""
        w = self.weights[image][k]
        order = np.argsort(-w, kind="stable")[:num]
        return order[w[order] > 0] if positive_only else order

    def top_mask(self, image: int = 0, k: int = 0, num: int = 5, positive_only: bool = True) -> np.ndarray:
        """``bool [H, W]``: the pixels of :meth:`top_superpixels` (what LIME's ``get_image_and_mask`` shows)."""
        return np.isin(self.segments[image], self.top_superpixels(image, k, num, positive_only))


def lime_explain(predict_fn: PredictFn, x, classes: ClassSpec = None, labels: Optional[Sequence[str]] = None,
                 segments: Optional[np.ndarray] = None, data: Optional[np.ndarray] = None,
                 **options) -> LimeResult:
    """LIME for a preprocessed batch ``x [B, 3, H, W]`` through ``predict_fn``; raw maps (probability units).

    Args:
        predict_fn: ``[n, 3, H, W] float32 -> probabilities [n, K]`` (numpy): the model's forward pass.
        x: numpy array or paddle tensor, already normalized as the model expects.
        classes: ``None`` (all), indices / label names (``labels``), or ``"predicted"`` (each image's top-1).
        segments: ``[B, H, W]`` (or ``[H, W]`` for one image) superpixel labels to use instead of segmenting.
        data: a ``[N, S]`` 0/1 perturbation matrix to use instead of drawing one (one image only; for tests
            against the ``lime`` package).
        **options: see :data:`DEFAULTS` (``num_samples``, ``segmentation``, ``hide_color``, ``seed``, ...).
    """
    opt = check_options(options)
    x = x.numpy() if isinstance(x, paddle.Tensor) else np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ChexcamError(f"expected a [B, 3, H, W] batch, got shape {list(x.shape)}")
    if segments is not None:
        segments = np.asarray(segments)
        segments = segments[None] if segments.ndim == 2 else segments
        if segments.shape != (x.shape[0],) + x.shape[2:]:
            raise ChexcamError(f"segments {list(segments.shape)} do not match the images {list(x.shape)}")
    if data is not None and len(x) != 1:
        raise ChexcamError("a given perturbation matrix (data=) explains one image at a time")
    t0 = time.perf_counter()
    forward, forwarded = 0.0, 0
    probs, tables, all_segments, weights, intercepts, scores, local = [], [], [], [], [], [], []
    for b in range(len(x)):
        img = np.ascontiguousarray(x[b], dtype=np.float32)
        seg = segments[b] if segments is not None else segment(
            rgb_image(img, opt["mean"], opt["std"]), opt["segmentation"], opt["kernel_size"], opt["max_dist"],
            opt["ratio"], opt["n_segments"], opt["compactness"], opt["seed"])
        n_seg = int(seg.max()) + 1
        z = np.asarray(data) if data is not None else perturbation_matrix(int(opt["num_samples"]), n_seg, int(opt["seed"]))
        if z.shape[1] != n_seg:
            raise ChexcamError(f"the perturbation matrix has {z.shape[1]} columns for {n_seg} superpixels")
        hidden = hidden_image(img, seg, opt["hide_color"])
        # identical rows are identical images: each distinct row goes through the model once (with 5-10
        # superpixels, as quickshift cuts a small cell, 1000 rows hold at most 2^S distinct ones)
        _, first, inverse = np.unique(z, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)  # distinct rows in first-seen order: row 0, the image itself, first
        rows = z[first[order]]
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        rank = rank[inverse.reshape(-1)]  # sample i is distinct row rank[i]
        preds = []
        step = int(opt["batch_size"])
        for i in range(0, len(rows), step):
            batch = perturbed_images(img, hidden, seg, rows[i:i + step])
            t = time.perf_counter()
            preds.append(np.asarray(predict_fn(batch), dtype=np.float64))
            forward += time.perf_counter() - t
        preds = np.concatenate(preds)
        if preds.ndim != 2 or len(preds) != len(rows):
            raise ChexcamError(f"predict_fn returned shape {list(preds.shape)} for {len(rows)} images; expected [n, K]")
        preds = preds[rank]
        forwarded += len(rows)
        table = class_table(classes, preds[:1], labels)[0]
        coef, icpt, score, lp = fit_local_models(z, preds[:, table], kernel_weights(z, float(opt["kernel_width"])),
                                                 float(opt["alpha"]))
        probs.append(preds[0])
        tables.append(table)
        all_segments.append(seg)
        weights.append(coef)
        intercepts.append(icpt)
        scores.append(score)
        local.append(lp)
    maps = superpixel_maps(weights, all_segments)
    timing = {"forward": forward, "total": time.perf_counter() - t0, "images": forwarded}
    return LimeResult(np.stack(probs).astype(np.float32), maps, np.stack(all_segments), weights,
                      np.stack(intercepts), np.stack(scores), np.stack(local), np.stack(tables), timing)


def model_predict_fn(model: nn.Layer, activation: str = "sigmoid") -> PredictFn:
    """``predict_fn`` through a Layer's dynamic graph (no gradients; the caller sets eval mode)."""
    check_activation(activation)

    def predict(batch: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            logits = model(paddle.to_tensor(np.ascontiguousarray(batch, dtype=np.float32)))
        if not isinstance(logits, paddle.Tensor) or logits.ndim != 2:
            shape = list(logits.shape) if isinstance(logits, paddle.Tensor) else type(logits).__name__
            raise ChexcamError(f"the model returns {shape}; LIME needs logits [B, K]")
        return activate(logits.numpy(), activation)

    return predict


@CAM_METHODS.register("lime")
class LIME:
    """LIME as a registered method: ``LIME(model, predict_fn=None, **options)(x, classes, normalize, ...)``.

    Explains the model's probabilities (``target="probability"``; ``activation`` says sigmoid or softmax);
    perturbs the input, so it explains no layer. The forward passes go through ``predict_fn`` when given
    (the :class:`chexcam.Explainer`'s predictor), else through ``model``'s dynamic graph in eval mode. Returns
    a :class:`LimeResult` (``probs, maps = result``; ``result.segments`` for drawing superpixel boundaries).
    """

    needs_grad = False
    #: the keyword options :func:`chexcam.explain` passes on (``explain(..., method="lime", num_samples=500)``)
    OPTIONS = tuple(DEFAULTS)

    def __init__(self, model: nn.Layer, target_layer: Optional[str] = None, predict_fn: Optional[PredictFn] = None,
                 **options):
        if target_layer is not None:
            raise ChexcamError(f"LIME perturbs the input image and explains no layer; got layer='{target_layer}' "
                               "(leave it unset, or cam.layer: null)")
        self.model = model
        self.predict_fn = predict_fn
        self.options = check_options(options)

    def resolve_target(self, target: Optional[str] = None) -> str:
        """LIME explains probabilities: ``"probability"`` (or unset), else a one-line error."""
        if check_target(target or "probability") != "probability":
            raise ChexcamError("LIME regresses the class probabilities: target must be 'probability' (or unset)")
        return "probability"

    def __call__(self, x, classes: ClassSpec = None, normalize: Union[bool, str] = True,
                 upsample: Union[bool, Tuple[int, int]] = True, relu: bool = False, target: Optional[str] = None,
                 activation: str = "sigmoid") -> LimeResult:
        self.resolve_target(target)
        check_activation(activation)
        mode = normalize_mode(normalize)
        if not isinstance(x, (np.ndarray, paddle.Tensor)):
            to_tensor(x)  # the one error message for a wrong input type
        xs = x.numpy() if isinstance(x, paddle.Tensor) else np.asarray(x, dtype=np.float32)
        if xs.ndim != 4 or xs.shape[1] != 3:
            raise ChexcamError(f"expected input of shape [B, 3, H, W], got shape {list(xs.shape)}")
        labels = getattr(self.model, "labels", None)
        if self.predict_fn is not None:
            res = lime_explain(self.predict_fn, xs, classes, labels, **self.options)
        else:
            with eval_mode(self.model):
                res = lime_explain(model_predict_fn(self.model, activation), xs, classes, labels, **self.options)
        return res.with_maps(postprocess(res.maps, upsample_size(upsample, xs.shape[2:]), mode, relu))


__all__ = ["LIME", "LimeResult", "lime_explain", "model_predict_fn", "segment", "rgb_image", "perturbation_matrix",
           "hidden_image", "perturbed_images", "kernel_weights", "fit_local_models", "check_options", "DEFAULTS",
           "SEGMENTATIONS", "superpixel_maps"]
