"""The web app (chexcam.engine.app, tools/app.py): logic without Gradio, then the served app through gradio_client."""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest

import chexcam
import chexcam.cam
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


def test_upload_limit_must_be_a_finite_number():
    for bad in ("nan", "inf", "0", "-3", "twenty"):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "app.py"), "-c", CHEST, "--max-upload-mb",
                               bad], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (bad, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "--max-upload-mb" in lines[0], (bad, lines)


def test_probabilities_are_one_bar_per_finding(xray_app, xray_png):
    probs, *_ = xray_app.predict(xray_png)
    table = appmod.probability_table(xray_app.labels, probs)
    assert list(table["finding"]) == xray_app.labels and np.allclose(table["probability"], list(probs.values()))


def test_every_registered_method_is_on_the_menu(xray_app, xray_png):
    assert xray_app.methods == list(chexcam.cam.list_cam_methods())
    assert xray_app.random_weights
    other = "gradcam"  # a method other than the config's (the registry may hold slow ones, such as LIME)
    res = xray_app.explain_file(xray_png, method=other)
    assert res.record["method"] == other and xray_app.explain_file(xray_png).record["method"] == "cam"
    with pytest.raises(appmod.UploadError, match="unknown method 'nope'"):
        xray_app.explain_file(xray_png, method="nope")


def _start_app_tool(tmp_path, *extra):
    """``python tools/app.py -c configs/chestxray14.yaml -o model.allow_random=true``, as a user starts it (the
    tool's defaults: the config's model, 127.0.0.1, Gradio's port taken from $GRADIO_SERVER_PORT, 20 MB);
    returns the process, its URL and its log file once the page answers."""
    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    log = open(tmp_path / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "app.py"), "-c", CHEST,
                             "-o", "model.allow_random=true", *extra], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"tools/app.py exited with {proc.returncode}: {log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return proc, url, log
        except OSError:
            time.sleep(1)
    proc.kill()
    pytest.fail("tools/app.py did not answer within 300 s")


def test_the_app_tool_starts_with_its_defaults_and_serves_requests(xray_png, tmp_path):
    pytest.importorskip("gradio", reason="the app needs Gradio (the [app] extra; CI installs it)")
    client_mod = pytest.importorskip("gradio_client", reason="the app test needs gradio_client (comes with Gradio)")
    proc, url, log = _start_app_tool(tmp_path)
    try:
        with urllib.request.urlopen(url + "config", timeout=30) as r:
            page = json.load(r)
        props = [c.get("props", {}) for c in page["components"]]
        text = " ".join(str(p.get("value", "")) for p in props if p.get("value") and isinstance(p["value"], str))
        assert "RANDOM weights" in text and "20 MB" in text  # the page says the weights are random
        menus = [[c[0] if isinstance(c, (list, tuple)) else c for c in p["choices"]] for p in props if "choices" in p]
        assert list(chexcam.cam.list_cam_methods()) in menus and list(chexcam.CHESTXRAY14_LABELS) in menus
        client = client_mod.Client(url, verbose=False)

        def call(finding, method="cam"):
            return client.predict(client_mod.handle_file(xray_png), finding, method, api_name="/explain")

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            a, b = pool.map(call, ["Effusion", "Cardiomegaly"])
        for res, finding in ((a, "Effusion"), (b, "Cardiomegaly")):
            bars, overlay, record, download = res
            assert [row[0] for row in bars["data"]] == list(chexcam.CHESTXRAY14_LABELS)  # one bar per finding
            probs = dict(bars["data"])
            assert abs(probs[finding] - record["classes"][finding]["probability"]) < 1e-5
            img = cv2.imread(overlay)
            assert img is not None and img.std() > 5
            assert record["image"] == "patient name.png" and record["weights"] is None and record["method"] == "cam"
            assert os.path.isfile(download) and download.endswith(".json")
        assert a[2]["classes"] == b[2]["classes"]  # the same image gives the same numbers under concurrency
        grad = call("Effusion", "gradcam")
        assert grad[2]["method"] == "gradcam" and grad[2]["classes"]["Effusion"]["probability"] == pytest.approx(
            a[2]["classes"]["Effusion"]["probability"], abs=1e-5)
        corrupt = tmp_path / "corrupt.png"
        corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
        with pytest.raises(Exception, match="cannot decode the PNG upload"):
            client.predict(client_mod.handle_file(str(corrupt)), "Effusion", "cam", api_name="/explain")
        again = call("Effusion")  # the server is still up
        assert again[2]["classes"] == a[2]["classes"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_an_upload_whose_header_hides_its_size_is_refused_small(xray_app):
    import struct

    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 30000, 30000, 1) + b"\x01\x11\x00"
    data = b"\xff\xd8\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0" + b"\x00" + sof + b"\xff\xd9"
    with pytest.raises(appmod.UploadError, match="30000x30000"):  # one extraneous byte before the frame header
        xray_app.explain_bytes(data)
