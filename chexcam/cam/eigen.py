"""Principal-component CAMs: Eigen-CAM, EigenGrad-CAM and KPCA-CAM."""

from __future__ import annotations

from typing import List

import numpy as np
import paddle

from ..errors import ChexcamError
from ..registry import CAM_METHODS
from .base import BaseCAM, BaseGradCAM, Pass, first_component

KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")


def _same_for_every_class(m: np.ndarray, n: int) -> paddle.Tensor:
    return paddle.to_tensor(np.repeat(m[:, None], n, axis=1))


@CAM_METHODS.register("eigencam")
class EigenCAM(BaseCAM):
    r"""Eigen-CAM (Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components", IJCNN
    2020).

    With ``O`` the ``(h w) x C`` matrix of the layer's activations (a row per position) and ``O = U S V^T``:

        L(i, j) = (O V_1)_{(i, j)}

    the projection on the first right singular vector. Class-agnostic: every class gets the same map (the
    model's dominant pattern), so it cannot tell findings apart. The sign of ``V_1`` is arbitrary; it is fixed
    so the map correlates positively with the channel sum ``sum_k A^k``. ``center=True`` centres the
    channels first, as pytorch-grad-cam's ``get_2d_projection`` does (the paper does not).
    """

    DEFAULTS = {"center": False}
    eigen_smoothable = False

    def class_maps(self, p: Pass, classes: List[int]) -> paddle.Tensor:
        m = first_component(p.feats.numpy(), center=bool(self.options["center"]))
        return _same_for_every_class(m, len(classes))


@CAM_METHODS.register("eigengradcam")
class EigenGradCAM(BaseGradCAM):
    r"""EigenGrad-CAM (pytorch-grad-cam's ``EigenGradCAM``, after Eigen-CAM, Muhammad & Yeasin, IJCNN 2020): the
    first principal component of the element-wise products of gradient and activation, class-specific unlike
    Eigen-CAM.

        L^c = first component of  (d y^c / d A) * A      (channels centred, as pytorch-grad-cam)

    The sign is fixed so that ``L^c`` correlates positively with ``sum_k (d y^c / d A^k) A^k`` (HiResCAM).
    """

    DEFAULTS = {"center": True}
    eigen_smoothable = False

    def combine(self, feats: paddle.Tensor, grads: paddle.Tensor, p: Pass) -> paddle.Tensor:
        return paddle.to_tensor(first_component((grads * feats).numpy(), center=bool(self.options["center"])))


@CAM_METHODS.register("kpcacam")
class KPCACAM(BaseCAM):
    r"""KPCA-CAM (Karmani et al., "KPCA-CAM: Visual Explainability of Deep Computer Vision Models using Kernel
    PCA", MMSP 2024).

    The positions' activation vectors (channels centred) are projected on the first component of kernel PCA
    (scikit-learn ``KernelPCA(n_components=1, kernel, gamma)``, default the sigmoid kernel as the paper's
    implementation in pytorch-grad-cam):

        L(i, j) = first kernel principal component of A_{:, i, j}

    Class-agnostic like Eigen-CAM; the sign is fixed so the map correlates positively with ``sum_k A^k``.
    """

    DEFAULTS = {"kernel": "sigmoid", "gamma": None}
    eigen_smoothable = False

    def __init__(self, model, target_layer=None, **options):
        super().__init__(model, target_layer, **options)
        if self.options["kernel"] not in KERNELS:
            raise ChexcamError(f"unknown KPCA-CAM kernel {self.options['kernel']!r}; expected one of {', '.join(KERNELS)}")

    def class_maps(self, p: Pass, classes: List[int]) -> paddle.Tensor:
        return _same_for_every_class(kpca_projection(p.feats.numpy(), self.options["kernel"], self.options["gamma"]),
                                     len(classes))


def kpca_projection(feats: np.ndarray, kernel: str = "sigmoid", gamma=None) -> np.ndarray:
    """``[B, C, h, w]`` -> ``[B, h, w]``: each image's first kernel principal component (channels centred)."""
    from sklearn.decomposition import KernelPCA

    a = np.nan_to_num(np.asarray(feats, dtype=np.float64))
    out = np.empty((a.shape[0],) + a.shape[2:], dtype=np.float32)
    for b, img in enumerate(a):
        samples = img.reshape(img.shape[0], -1).T
        samples = samples - samples.mean(axis=0)
        proj = KernelPCA(n_components=1, kernel=kernel, gamma=gamma).fit_transform(samples)[:, 0]
        ref = img.sum(axis=0).ravel()
        if float(proj @ (ref - ref.mean())) < 0:
            proj = -proj
        out[b] = proj.reshape(img.shape[1:])
    return out
