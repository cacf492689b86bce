"""The HTML pages in a real browser: headless Chromium driven by selenium loads them from disk (file://).

Skips with a reason where selenium, Chromium or chromedriver is missing (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them). Screenshots are saved to ``tests/artifacts/`` (or
``$CHEXCAM_TEST_ARTIFACTS``) and checked not to be blank.
"""

import json
import pathlib

import numpy as np
import pytest

from chexcam import plots, viewer
from chexcam.labels import CHESTXRAY14_LABELS
from chexcam.metrics import calibration as C

from . import browser
from .viewer_data import make_infer_folder, make_malaria_folder

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def driver():
    d = browser.start_chromium()
    yield d
    browser.stop(d)


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    out, probs, targets = make_infer_folder(str(tmp_path_factory.mktemp("chest")), n=10, size=(120, 100))
    return viewer.write_viewer(out, page_size=6), probs, targets


def _by(driver):
    from selenium.webdriver.common.by import By

    return By


def _count(driver):
    return int(driver.find_element(_by(driver).ID, "count").get_attribute("data-matches"))


def _cards(driver):
    return driver.find_elements(_by(driver).CSS_SELECTOR, "#grid > li")


def _load(driver, path):
    driver.get(pathlib.Path(path).as_uri())
    assert driver.execute_script("return document.documentElement.getAttribute('data-ready')") == "1"


def _images_loaded(driver, selector):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).filter(function (i) {"
        " return i.complete && i.naturalWidth > 0; }).length", selector)


def test_gallery_filter_sort_and_pages(driver, chest):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    index, probs, targets = chest
    By = _by(driver)
    _load(driver, index)
    assert _count(driver) == 10 and len(_cards(driver)) == 6  # page size 6: first page of two
    WebDriverWait(driver, 10).until(lambda d: _images_loaded(d, "#grid img") == 6)
    browser.screenshot(driver, "viewer_gallery.png")
    driver.find_elements(By.CSS_SELECTOR, "button.next")[0].click()
    assert len(_cards(driver)) == 4
    k = list(CHESTXRAY14_LABELS).index("Effusion")
    Select(driver.find_element(By.ID, "finding")).select_by_visible_text("Effusion")
    thr = driver.find_element(By.ID, "threshold")
    thr.clear()
    thr.send_keys("0.5")
    expected = int((probs[:, k] >= 0.5).sum())
    assert 0 < expected < 10 and _count(driver) == expected and len(_cards(driver)) == min(6, expected)
    shown = [float(c.find_element(By.CSS_SELECTOR, "li.sel .p").text.rstrip("%")) / 100 for c in _cards(driver)]
    assert shown == sorted(shown, reverse=True) and min(shown) >= 0.5  # sorted by the finding's probability
    Select(driver.find_element(By.ID, "truth")).select_by_value("pos")
    assert _count(driver) == int(((probs[:, k] >= 0.5) & (targets[:, k] == 1)).sum())
    Select(driver.find_element(By.ID, "truth")).select_by_value("all")
    Select(driver.find_element(By.ID, "sort")).select_by_value("asc")
    shown = [float(c.find_element(By.CSS_SELECTOR, "li.sel .p").text.rstrip("%")) for c in _cards(driver)]
    assert shown == sorted(shown)
    assert browser.severe_errors(driver) == []


def test_open_image_step_classes_opacity_boxes_and_record(driver, chest):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    index, probs, _ = chest
    By = _by(driver)
    _load(driver, index)
    first = _cards(driver)[0]
    stem = first.get_attribute("data-stem")
    i = [f"img_{j:03d}" if j != 1 else "odd name #1" for j in range(10)].index(stem)
    first.find_element(By.CSS_SELECTOR, "button.open").click()
    dialog = driver.find_element(By.ID, "detail")
    assert dialog.get_attribute("open") is not None
    cls = lambda: int(driver.find_element(By.ID, "cls").get_attribute("value"))  # noqa: E731
    k0 = cls()
    assert k0 == int(np.argmax(probs[i]))  # opens on the most probable finding
    ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
    assert cls() == (k0 + 1) % 14
    ActionChains(driver).send_keys(Keys.ARROW_LEFT).send_keys(Keys.ARROW_LEFT).perform()
    assert cls() == (k0 - 1) % 14
    assert CHESTXRAY14_LABELS[cls()] in driver.find_element(By.ID, "d-status").text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#bars button")) == 14
    WebDriverWait(driver, 10).until(lambda d: '"classes"' in d.find_element(By.ID, "d-record").text)
    record = json.loads(driver.find_element(By.ID, "d-record").text)
    assert record["classes"][CHESTXRAY14_LABELS[k0]]["probability"] == pytest.approx(probs[i, k0])
    # a class with a box (probability >= 0.5 in the synthetic records): the toggle shows and hides it
    kb = int(np.flatnonzero(probs[i] >= 0.5)[0])
    driver.find_elements(By.CSS_SELECTOR, "#bars button")[[*np.argsort(-probs[i], kind="stable")].index(kb)].click()
    assert cls() == kb
    rects = lambda: len(driver.find_elements(By.CSS_SELECTOR, "#svg rect.pred"))  # noqa: E731
    assert rects() == 2  # the box and its halo
    driver.find_element(By.ID, "boxes").click()
    assert rects() == 0
    driver.find_element(By.ID, "boxes").click()
    slider = driver.find_element(By.ID, "opacity")
    driver.execute_script("arguments[0].value = 70; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert driver.find_element(By.ID, "heat").value_of_css_property("opacity") == "0.7"
    heat_alt = driver.find_element(By.ID, "heat").get_attribute("aria-label")
    assert CHESTXRAY14_LABELS[kb] in heat_alt and "colour bar" in heat_alt
    WebDriverWait(driver, 10).until(lambda d: _images_loaded(d, "#d-img, .cbar img") == 2)
    assert driver.find_element(By.CSS_SELECTOR, ".cbar img").get_attribute("alt").startswith("Colour bar")
    _, shot = browser.screenshot(driver, "viewer_detail.png")
    assert shot[..., 2].astype(int).max() - shot[..., 0].astype(int).min() > 100  # the heatmap's colours
    ActionChains(driver).send_keys(Keys.PAGE_DOWN).perform()  # next image
    assert driver.find_element(By.ID, "d-title").text.startswith(_cards(driver)[1].get_attribute("data-stem"))
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()
    assert dialog.get_attribute("open") is None
    assert browser.severe_errors(driver) == []


def test_binary_malaria_viewer(driver, tmp_path):
    from selenium.webdriver.support.ui import Select

    out, probs, targets = make_malaria_folder(str(tmp_path), n=6)
    _load(driver, viewer.write_viewer(out))
    By = _by(driver)
    assert _count(driver) == 6 and len(Select(driver.find_element(By.ID, "finding")).options) == 1
    Select(driver.find_element(By.ID, "truth")).select_by_value("pos")
    assert _count(driver) == int(targets[:, 0].sum())
    Select(driver.find_element(By.ID, "truth")).select_by_value("all")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#grid .ok, #grid .miss")) == 6  # right/wrong per cell
    _cards(driver)[0].find_element(By.CSS_SELECTOR, "button.open").click()
    assert len(driver.find_elements(By.CSS_SELECTOR, "#bars button")) == 1
    browser.screenshot(driver, "viewer_malaria_detail.png")
    assert browser.severe_errors(driver) == []


def test_report_and_localization_pages(driver, tmp_path):
    labels = list(CHESTXRAY14_LABELS[:4])
    rng = np.random.default_rng(0)
    y = (rng.random((80, 4)) < 0.3).astype(float)
    p = np.clip(0.45 * y + 0.55 * rng.random((80, 4)), 0, 1)
    cal = C.calibration_report(y, p, labels)
    plots.save(plots.roc_figure(y, p, labels), str(tmp_path / "roc.png"))
    plots.save(plots.reliability_figure(cal, labels), str(tmp_path / "reliability.png"))
    metrics = {"split": "test", "images": 80, "mean_auroc": 0.9, "mean_auroc_ci": [0.85, 0.93], "calibration": cal,
               "chexnet_paper_mean": 0.841, "per_class": [
                   {"label": lab, "model_class": lab, "positives": int(y[:, k].sum()), "auroc": 0.9,
                    "auroc_ci": [0.8, 0.95], "chexnet_paper": 0.8, "f1_threshold": 0.5, "f1": 0.6}
                   for k, lab in enumerate(labels)]}
    _load_plain(driver, viewer.write_report_html(str(tmp_path), metrics))
    By = _by(driver)
    assert len(driver.find_elements(By.CSS_SELECTOR, "tbody tr")) == 5  # 4 findings and the mean
    assert _images_loaded(driver, "figure.plot img") == 2
    browser.screenshot(driver, "report.png")
    import cv2

    img = np.full((200, 160, 3), 70, np.uint8)
    cv2.circle(img, (80, 100), 40, (200, 200, 200), -1)
    path = str(tmp_path / "00000003_000.png")
    cv2.imwrite(path, img)
    items = {path: {"Cardiomegaly": ([(40, 60, 120, 140)], [[50, 70, 115, 135]], (80.0, 100.0)),
                    "Mass": ([(10, 10, 40, 40)], [[100, 150, 150, 190]], (120.0, 170.0))}}
    _load_plain(driver, viewer.write_localization_html(str(tmp_path), items, "Localization test"))
    from selenium.webdriver.support.ui import Select

    assert driver.find_element(By.ID, "count").text == "2 shown"
    driver.find_element(By.ID, "misses").click()
    assert driver.find_element(By.ID, "count").text == "1 shown"
    driver.find_element(By.ID, "misses").click()
    Select(driver.find_element(By.ID, "finding")).select_by_visible_text("Cardiomegaly")
    assert driver.find_element(By.ID, "count").text == "1 shown"
    browser.screenshot(driver, "localization.png")
    assert browser.severe_errors(driver) == []


def _load_plain(driver, path):
    driver.get(pathlib.Path(path).as_uri())
