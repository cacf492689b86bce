"""Headless Chromium through selenium for the page tests; skips with a reason where either is missing.

Chromium and its WebDriver are Debian's packages ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them
as root when missing); ``CHROMIUM``/``CHROMEDRIVER`` name other binaries. Screenshots go to
``tests/artifacts/`` (ignored by git) or to ``$CHEXCAM_TEST_ARTIFACTS``.
"""

import os
import shutil
import tempfile

import cv2
import numpy as np
import pytest

from .conftest import ROOT

ARTIFACTS = os.environ.get("CHEXCAM_TEST_ARTIFACTS") or os.path.join(ROOT, "tests", "artifacts")
#: the flags this machine needs: no sandbox as root, no GPU, and no background connections (the network is closed)
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1366,900", "--force-device-scale-factor=1")


def _binary(env, *names):
    path = os.environ.get(env)
    if path:
        return path if os.path.exists(path) else None
    for n in names:
        found = shutil.which(n)
        if found:
            return found
    return None


def start_chromium():
    """A selenium WebDriver on a fresh headless Chromium profile; the caller quits it (and removes the profile
    with :func:`stop`). Skips the test when selenium, Chromium or chromedriver is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser tests need selenium (the [test] extra)")
    from selenium.webdriver.chrome.service import Service

    chromium = _binary("CHROMIUM", "chromium", "chromium-browser", "google-chrome")
    driver_bin = _binary("CHROMEDRIVER", "chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("no Chromium/chromedriver (Debian: apt-get install chromium chromium-driver; .ci/run does it)")
    profile = tempfile.mkdtemp(prefix="chexcam-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument("--allow-file-access-from-files")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(driver_bin))
    driver.set_page_load_timeout(60)
    driver._chexcam_profile = profile
    return driver


def stop(driver):
    try:
        driver.quit()
    finally:
        shutil.rmtree(getattr(driver, "_chexcam_profile", ""), ignore_errors=True)


def screenshot(driver, name):
    """Save a PNG screenshot under ARTIFACTS; returns ``(path, image)`` and fails when it is blank."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    assert driver.save_screenshot(path), f"screenshot {path} failed"
    img = cv2.imread(path)
    assert img is not None and img.shape[0] > 100, path
    assert float(img.std()) > 12.0, f"{path} looks blank (pixel std {img.std():.1f})"
    assert len(np.unique(img.reshape(-1, 3)[::97], axis=0)) > 20, f"{path} has almost no colours"
    return path, img


def severe_errors(driver):
    """JavaScript errors the page logged (console SEVERE entries)."""
    try:
        logs = driver.get_log("browser")
    except Exception:  # noqa: BLE001 - a driver without the log endpoint
        return []
    return [e["message"] for e in logs if e.get("level") == "SEVERE"]
