"""The serving runtime, kept apart from the library as PaddleClas keeps ``deploy/`` apart: export of a model
+ CAM graph, the Paddle Inference predictor, ONNX, and :class:`Explainer`, the fast engine a caller asks for
by name. Nothing below this package imports it; :func:`chexcam.explain` never reaches into it.
"""

from .explainer import CHECK_SHAPE, ENGINES, RTOL, Explainer, structure_signature
from .export import META_FILE, PARAMS_FILE, export_model, find_program, read_meta
from .predictor import PRECISIONS, Predictor, cpu_count, cpu_has_bf16, predictor_config

__all__ = ["Explainer", "ENGINES", "RTOL", "CHECK_SHAPE", "structure_signature", "export_model", "find_program",
           "read_meta", "META_FILE", "PARAMS_FILE", "Predictor", "PRECISIONS", "predictor_config", "cpu_count",
           "cpu_has_bf16"]
