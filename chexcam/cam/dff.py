"""Deep Feature Factorization: NMF concepts of the feature map, scored by the head."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import paddle

from ..errors import ChexcamError
from ..registry import CAM_METHODS
from .base import BaseCAM, Pass
from .cam import linear_head


def factorize(feats: np.ndarray, n_components: int = 5, seed: int = 0, max_iter: int = 200
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NMF of one image's ``[C, h, w]`` activations: ``(W [C, n], H [n, h, w], offset [C])`` with
    ``A - offset ~ W H``.

    ``offset`` is each channel's minimum (zero after a ReLU), so the factorized matrix is non-negative for
    any layer (pytorch-grad-cam's ``dff`` shifts the same way). scikit-learn ``NMF(init="random",
    random_state=seed)``, float64.
    """
    from sklearn.decomposition import NMF

    a = np.nan_to_num(np.asarray(feats, dtype=np.float64))
    c, h, w = a.shape
    flat = a.reshape(c, h * w)
    offset = flat.min(axis=1)
    model = NMF(n_components=int(n_components), init="random", random_state=int(seed), max_iter=int(max_iter))
    basis = model.fit_transform(flat - offset[:, None])
    return basis, model.components_.reshape(-1, h, w), offset


@CAM_METHODS.register("dff")
class DeepFeatureFactorization(BaseCAM):
    r"""Deep Feature Factorization (Collins, Achanta & Suesstrunk, "Deep Feature Factorization for Concept
    Discovery", ECCV 2018), with each concept scored by the head.

    The activations of an image are factorized, ``A - o ~ W H`` (non-negative, ``n_components`` concepts:
    ``W_j`` a concept's channel profile, ``H_j`` where it is), and the head scores each concept. The map of
    class ``c`` is the CAM of the factorized feature map,

        L^c(i, j) = sum_j (w_c . W_j) H_j(i, j) + w_c . o

    the concept maps weighted by their class-``c`` scores ``w_c . W_j``: with as many concepts as the rank of
    ``A`` it is the CAM itself. Each image is factorized on its own (pytorch-grad-cam factorizes a whole batch
    at once, so an image's concepts depend on its batch). Needs the GAP + linear head, at its layer.
    """

    DEFAULTS = {"n_components": 5, "seed": 0, "max_iter": 200}
    eigen_smoothable = False

    def __init__(self, model, target_layer=None, **options):
        super().__init__(model, target_layer, **options)
        self.head = linear_head(model)
        if int(self.options["n_components"]) < 1:
            raise ChexcamError(f"dff n_components must be >= 1, got {self.options['n_components']}")

    def class_maps(self, p: Pass, classes: List[int]) -> paddle.Tensor:
        weight = self.head.weight.numpy().astype(np.float64)[:, classes]  # [C, K']
        feats = p.feats.numpy()
        if feats.shape[1] != weight.shape[0]:
            raise ChexcamError(f"layer '{p.layer_name}' has {feats.shape[1]} channels but the head expects "
                               f"{weight.shape[0]}; dff scores concepts with the head, at the layer that feeds it")
        out = []
        for img in feats:
            basis, comps, offset = factorize(img, self.options["n_components"], self.options["seed"],
                                             self.options["max_iter"])
            scores = basis.T @ weight  # [n, K']: each concept's class scores through the head
            out.append(np.einsum("nk,nhw->khw", scores, comps) + (offset @ weight)[:, None, None])
        return paddle.to_tensor(np.stack(out).astype(np.float32))
