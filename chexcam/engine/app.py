"""The web app of ``tools/app.py`` (Gradio, as AI Studio and Hugging Face apps are written): upload an X-ray,
get every class's probability (one bar per finding: the classes are not exclusive), the class map of a chosen
finding by a chosen method (any of :func:`chexcam.cam.list_cam_methods`) with its boxes, and the JSON record.

The logic lives in :class:`XrayApp`, importable and testable without Gradio; :func:`build_demo` wires it to
Gradio's components and :func:`launch` serves it. One model is built at start and shared by every request,
with one :class:`chexcam.Explainer` (the fast path) per method, built when the method is first asked for; the model call is serialized by a lock (the Explainer's
predictor has its own, and the dynamic-graph fallback must not run two hooked forwards at once), decoding and
drawing run concurrently.

Uploads are untrusted: the size is capped (``max_upload_mb``, also enforced by Gradio at upload), the type is
taken from the file's first bytes (PNG, JPEG or DICOM), never from its name, and the bytes are copied into a
private folder under a random name (``upload-<uuid>.<type>``) that is deleted after the request; the client's
file name is only echoed, as text, in the record. A file that cannot be decoded is a one-line message, never a
traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np

from .. import viz
from ..cam import list_cam_methods
from ..config import Config
from ..errors import ChexcamError
from . import infer

logger = logging.getLogger(__name__)

MAX_UPLOAD_MB = 20
#: px, longest side of the overlay the app returns
DISPLAY = 768
#: downloadable JSON files older than this are removed from the app's folder
KEEP_SECONDS = 3600


class UploadError(ChexcamError):
    """An upload the app refuses or cannot decode (shown to the user as one line)."""


def sniff(head: bytes) -> Optional[str]:
    """The image type from a file's first bytes: ``png``, ``jpg``, ``dcm`` or ``None``."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dcm"
    return None


@dataclass
class Result:
    """One explained upload: the record (JSON), and what the overlay needs."""

    record: Dict[str, Any]
    image: np.ndarray
    maps: np.ndarray
    probs: np.ndarray
    boxes: List[np.ndarray]


class XrayApp:
    """Probabilities, class maps and boxes of uploaded images with one model loaded once.

    Args:
        cfg: the resolved config (``model.weights`` or ``model.allow_random``, ``cam``, ``infer``,
            ``localization`` sections apply as in ``tools/infer_cam.py``).
        model: an already built model (tests); default: built from ``cfg`` (``model.weights``).
        max_upload_mb: the largest upload accepted (a finite number > 0).
    """

    def __init__(self, cfg: Config, model=None, max_upload_mb: float = MAX_UPLOAD_MB):
        if not (isinstance(max_upload_mb, (int, float)) and max_upload_mb > 0 and max_upload_mb < float("inf")):
            raise ChexcamError(f"the upload limit must be a finite number of MB > 0, got {max_upload_mb!r}")
        if cfg.infer.ten_crop:
            logger.info("the app explains the centre crop; infer.ten_crop is ignored")
        self.cfg = cfg
        self.labels = list(cfg.data.labels)
        self.max_bytes = max(1, int(max_upload_mb * 1024 * 1024))
        #: random weights (``model.allow_random``): the page says so above everything it shows
        self.random_weights = not cfg.model.weights
        self.methods = list(list_cam_methods())  # the registry's, whatever methods it holds
        self.model = model if model is not None else infer.load_model(cfg)
        self.explainer = infer.explainer_from_config(cfg, self.model)
        self._explainers = {self.explainer.method: self.explainer}
        self._lock = threading.Lock()
        self.workdir = tempfile.mkdtemp(prefix="chexcam-app-")  # mode 0700: only this user reads uploads

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def explainer_for(self, method: Optional[str] = None):
        """The :class:`chexcam.Explainer` of ``method`` (default: the config's ``cam.method``) on the app's one
        model, built the first time it is asked for (call under the lock)."""
        method = method or self.explainer.method
        if method not in self.methods:
            raise UploadError(f"unknown method '{method}'; expected one of {', '.join(self.methods)}")
        if method not in self._explainers:
            self._explainers[method] = infer.explainer_from_config(self.cfg, self.model, method=method)
        return self._explainers[method]

    # -- the work of one request -----------------------------------------------------------------------
    def explain_file(self, path: Optional[str], client_name: Optional[str] = None,
                     method: Optional[str] = None) -> Result:
        """Explain the uploaded file at ``path`` (Gradio's copy) with ``method`` (default ``cam.method``);
        ``client_name`` is echoed in the record."""
        if not path:
            raise UploadError("no file: upload a chest X-ray (PNG, JPEG or DICOM)")
        try:
            size = os.path.getsize(path)
            if size > self.max_bytes:
                raise UploadError(f"the file is {size / 2**20:.1f} MB; the limit is {self.max_bytes / 2**20:g} MB")
            with open(path, "rb") as fh:
                data = fh.read(self.max_bytes + 1)
        except OSError as exc:
            raise UploadError(f"cannot read the upload: {exc.strerror}") from None
        return self.explain_bytes(data, client_name or os.path.basename(path), method)

    def explain_bytes(self, data: bytes, client_name: str = "upload", method: Optional[str] = None) -> Result:
        """Explain an image given as bytes (PNG, JPEG or DICOM, recognized by content)."""
        if len(data) > self.max_bytes:
            raise UploadError(f"the file is larger than the limit of {self.max_bytes / 2**20:g} MB")
        kind = sniff(data[:132])
        if kind is None:
            raise UploadError("not a PNG, JPEG or DICOM file (the first bytes are neither): upload a chest X-ray image")
        path = os.path.join(self.workdir, f"upload-{uuid.uuid4().hex}.{kind}")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
            fh.write(data)
        bad: List[str] = []
        try:
            with self._lock:
                explainer = self.explainer_for(method)
                results = list(infer.explain_images(self.cfg, explainer, [infer.Item(path)], on_bad=bad.append,
                                                    progress=False))
        finally:
            os.remove(path)
        if not results:
            why = bad[0].replace(path, "the upload") if bad else "unknown error"
            raise UploadError(f"cannot decode the {kind.upper()} upload: {why}")
        res = results[0]
        record = infer.record_of(self.cfg, res)
        record["image"] = os.path.basename(str(client_name))[:200]  # the client's name, as text only
        record["method"] = explainer.method
        return Result(record, res.image, res.maps, res.probs, res.boxes)

    def overlay(self, result: Result, finding: Optional[str] = None) -> np.ndarray:
        """The image (longest side at most :data:`DISPLAY`) with the class map of ``finding`` (default: the most
        probable class), its boxes, a title with the probability, and the colour bar."""
        k = self.labels.index(finding) if finding in self.labels else int(np.argmax(result.probs))
        img = result.image
        s = min(1.0, DISPLAY / max(img.shape[:2]))
        if s < 1:
            img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                             interpolation=cv2.INTER_AREA)
        out = viz.overlay(img, result.maps[k], self.cfg.infer.colormap, self.cfg.infer.alpha)
        boxes = [[v * s for v in b[:4]] for b in result.boxes[k]]
        if boxes:
            out = viz.draw_boxes(out, boxes, thickness=max(1, round(max(img.shape[:2]) / 256)))
        out = viz.label_tile(out, f"{self.labels[k]}: {100 * float(result.probs[k]):.1f}%")
        return viz.add_colorbar(out, self.cfg.infer.colormap)

    def save_record(self, record: Dict[str, Any]) -> str:
        """The record as a JSON file to download (random name in the app's folder; old ones are removed)."""
        now = time.time()
        for name in os.listdir(self.workdir):
            p = os.path.join(self.workdir, name)
            if name.endswith(".json") and now - os.path.getmtime(p) > KEEP_SECONDS:
                os.remove(p)
        path = os.path.join(self.workdir, f"chexcam-{uuid.uuid4().hex[:12]}.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1)
        return path

    def predict(self, path: Optional[str], finding: Optional[str] = None, client_name: Optional[str] = None,
                method: Optional[str] = None) -> Tuple[Dict[str, float], np.ndarray, Dict[str, Any], str]:
        """What the page shows: ``({class: probability}, overlay RGB, record, JSON file path)``."""
        res = self.explain_file(path, client_name, method)
        probs = {lab: float(p) for lab, p in zip(self.labels, res.probs)}
        return probs, self.overlay(res, finding), res.record, self.save_record(res.record)


# ---------------------------------------------------------------------------------------------
# Gradio


def probability_table(labels: List[str], probs: Dict[str, float]):
    """The probabilities as a table for :class:`gradio.BarPlot`: one bar per finding, in the labels' order
    (the classes are not exclusive, so no single top class is singled out)."""
    import pandas as pd

    return pd.DataFrame({"finding": list(labels), "probability": [float(probs[lab]) for lab in labels]})


def build_demo(app: XrayApp, concurrency: int = 2):
    """The Gradio page of ``app``; its API endpoint is ``/explain`` (file, finding, method)."""
    import gradio as gr

    labels = app.labels
    title = "chexcam: where does the model look?"

    def run(file, finding, method=None):
        name = getattr(file, "orig_name", None) or (file if isinstance(file, str) else None)
        path = file if isinstance(file, str) else getattr(file, "name", None)
        try:
            probs, image, record, json_path = app.predict(path, finding, os.path.basename(name) if name else None,
                                                          method)
        except ChexcamError as exc:
            raise gr.Error(str(exc)) from None
        return probability_table(labels, probs), image, record, json_path

    weights = (f"Weights: `{os.path.basename(str(app.cfg.model.weights))}`." if not app.random_weights else
               "**RANDOM weights** (`model.allow_random=true`): the probabilities and maps are meaningless; "
               "pass `-o model.weights=PATH` for a trained model.")
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, KEEP_SECONDS)) as demo:
        gr.Markdown(f"# {title}\n{weights}\n\nUpload a chest X-ray (PNG, JPEG or DICOM, up to "
                    f"{app.max_bytes / 2**20:g} MB). The model ({app.cfg.model.name}) gives a probability for "
                    f"each of its {len(labels)} classes and a class activation map for the finding and method you "
                    "choose, with the boxes drawn around its strongest regions. Research software, not a medical "
                    "device.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="X-ray (PNG, JPEG or DICOM)", file_count="single", type="filepath")
                finding = gr.Dropdown(choices=labels, value=labels[0], label="Finding to show")
                method = gr.Dropdown(choices=app.methods, value=app.explainer.method, label="Method")
                button = gr.Button("Explain", variant="primary")
                probs = gr.BarPlot(label="Probability of each finding", x="finding", y="probability",
                                   y_lim=[0, 1], sort=labels, x_label_angle=-45 if len(labels) > 4 else 0)
            with gr.Column():
                overlay = gr.Image(label="Class activation map, boxes and colour bar", type="numpy",
                                   interactive=False)
                record = gr.JSON(label="JSON record")
                download = gr.File(label="Download the JSON record", interactive=False)
        inputs, outputs = [upload, finding, method], [probs, overlay, record, download]
        button.click(run, inputs, outputs, api_name="explain", concurrency_limit=concurrency)
        finding.change(run, inputs, outputs, api_name=False, concurrency_limit=concurrency)
        method.change(run, inputs, outputs, api_name=False, concurrency_limit=concurrency)
    return demo


def launch(cfg: Config, host: str = "127.0.0.1", port: Optional[int] = None, max_upload_mb: float = MAX_UPLOAD_MB,
           block: bool = True):
    """Build the app and serve it on ``host:port`` (Gradio's default port when ``None``); returns
    ``(demo, url, app)`` when ``block`` is false (tests), else serves until interrupted."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ChexcamError("the app needs Gradio: pip install 'chexcam[app]'") from None
    app = XrayApp(cfg, max_upload_mb=max_upload_mb)
    demo = build_demo(app)
    # the limit in bytes: Gradio parses a string such as "20.0mb" as a unit ".0mb" and refuses it
    _, url, _ = demo.launch(server_name=host, server_port=port, max_file_size=app.max_bytes, share=False,
                            prevent_thread_lock=not block, show_error=True, quiet=not block)
    if not block:
        return demo, url, app
    app.close()
    return None


__all__ = ["XrayApp", "Result", "UploadError", "sniff", "probability_table", "build_demo", "launch", "MAX_UPLOAD_MB"]
