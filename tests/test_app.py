"""The web app (chexcam.engine.app, tools/app.py): logic without Gradio, then the served app through gradio_client."""

import concurrent.futures
import os
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest

import chexcam
from chexcam.engine import app as appmod

from .conftest import ROOT
from .test_io import _write_dicom

CHEST = os.path.join(ROOT, "configs", "chestxray14.yaml")
TINY = ["model.name=densenet_tiny", "model.output_stride=8", "model.allow_random=true", "device=cpu",
        "data.resize=64", "data.crop=56"]


@pytest.fixture(scope="module")
def xray_app():
    import paddle

    cfg = chexcam.load_config(CHEST, TINY)
    paddle.seed(0)
    a = appmod.XrayApp(cfg, max_upload_mb=1)
    yield a
    a.close()


@pytest.fixture(scope="module")
def xray_png(tmp_path_factory):
    rng = np.random.default_rng(0)
    img = rng.normal(100, 30, (90, 72)).clip(0, 255).astype(np.uint8)
    cv2.circle(img, (30, 50), 12, 230, -1)
    path = str(tmp_path_factory.mktemp("xray") / "patient name.png")
    cv2.imwrite(path, img)
    return path


def test_sniff_by_content_not_name():
    assert appmod.sniff(b"\x89PNG\r\n\x1a\n" + b"\0" * 10) == "png"
    assert appmod.sniff(b"\xff\xd8\xff\xe0") == "jpg"
    assert appmod.sniff(b"\0" * 128 + b"DICM") == "dcm"
    assert appmod.sniff(b"GIF89a") is None


def test_explain_upload_record_overlay_and_no_trace_of_the_upload(xray_app, xray_png):
    probs, overlay, record, json_path = xray_app.predict(xray_png, "Effusion", client_name="../../etc/x ray.png")
    assert list(probs) == list(chexcam.CHESTXRAY14_LABELS) and all(0 <= p <= 1 for p in probs.values())
    assert overlay.ndim == 3 and overlay.shape[0] == 90 and overlay.shape[1] > 72  # image + colour bar
    assert record["size"] == [72, 90] and record["image"] == "x ray.png"  # the client's name as text only
    assert set(record["classes"]["Effusion"]) >= {"probability", "boxes", "peak"}
    assert os.path.dirname(json_path) == xray_app.workdir and os.path.basename(json_path).startswith("chexcam-")
    left = os.listdir(xray_app.workdir)
    assert all(n.startswith("chexcam-") and n.endswith(".json") for n in left), left  # uploads were deleted


def test_dicom_upload_by_content_and_jpeg(xray_app, tmp_path):
    pixels = np.random.default_rng(2).integers(0, 4095, (64, 60), dtype=np.uint16)
    dcm = _write_dicom(tmp_path / "no_extension", pixels, window=(2048, 4096))
    probs, overlay, record, _ = xray_app.predict(dcm, "Mass", client_name="study")
    assert record["size"] == [60, 64] and len(probs) == 14
    jpg = str(tmp_path / "x.jpg")
    cv2.imwrite(jpg, (pixels // 16).astype(np.uint8))
    assert xray_app.explain_file(jpg).record["size"] == [60, 64]


def test_bad_uploads_are_one_line_messages(xray_app, tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(appmod.UploadError, match="cannot decode the PNG upload"):
        xray_app.explain_file(str(bad))
    txt = tmp_path / "notes.png"
    txt.write_text("hello")
    with pytest.raises(appmod.UploadError, match="not a PNG, JPEG or DICOM"):
        xray_app.explain_file(str(txt))
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * 2**20))
    with pytest.raises(appmod.UploadError, match="limit is 1 MB"):
        xray_app.explain_file(str(big))
    with pytest.raises(appmod.UploadError, match="no file"):
        xray_app.explain_file(None)
    assert not [n for n in os.listdir(xray_app.workdir) if n.startswith("upload-")]


def test_app_tool_help():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "app.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--host" in proc.stdout and "127.0.0.1" in proc.stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_app_two_concurrent_requests_and_a_corrupt_upload(xray_png, tmp_path, monkeypatch):
    pytest.importorskip("gradio", reason="the app needs Gradio (the [app] extra; CI installs it)")
    client_mod = pytest.importorskip("gradio_client", reason="the app test needs gradio_client (comes with Gradio)")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    cfg = chexcam.load_config(CHEST, TINY)
    demo, url, xapp = appmod.launch(cfg, host="127.0.0.1", port=_free_port(), max_upload_mb=2, block=False)
    try:
        assert url.startswith("http://127.0.0.1:")
        client = client_mod.Client(url, verbose=False)

        def call(finding):
            return client.predict(client_mod.handle_file(xray_png), finding, api_name="/explain")

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            a, b = pool.map(call, ["Effusion", "Cardiomegaly"])
        for res, finding in ((a, "Effusion"), (b, "Cardiomegaly")):
            label, overlay, record, download = res
            confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
            assert len(confidences) == 14 and abs(confidences[finding] - record["classes"][finding]["probability"]) < 1e-5
            img = cv2.imread(overlay)
            assert img is not None and img.std() > 5
            assert record["image"] == "patient name.png"
            assert os.path.isfile(download) and download.endswith(".json")
        assert a[2]["classes"] == b[2]["classes"]  # the same image gives the same numbers under concurrency
        corrupt = tmp_path / "corrupt.png"
        corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
        with pytest.raises(Exception, match="cannot decode the PNG upload"):
            client.predict(client_mod.handle_file(str(corrupt)), "Effusion", api_name="/explain")
        again = call("Effusion")  # the server is still up
        assert again[2]["classes"] == a[2]["classes"]
    finally:
        demo.close()
        xapp.close()
