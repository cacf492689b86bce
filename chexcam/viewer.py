"""HTML pages of results: the viewer of an ``infer_cam.py`` folder, ``report.html`` of ``eval.py`` and the
per-image boxes page of ``eval_localization.py``.

Every page is one self-contained HTML file (styles and scripts inline; no CDN, no server, no network) that
works from ``file://``, in a browser tab served by Jupyter and in AI Studio's file browser.

**The viewer** (:func:`write_viewer`) is built from the files in the folder alone, so it also works on
folders written before it existed: the JSON records (probabilities, ground truth, boxes), the original images
they name, and the maps (``<stem>_maps.npz`` when ``infer.save_npz`` was on; otherwise each class's tile cut
from the ``<stem>_cam.png`` mosaic). It writes ``index.html`` and, under ``viewer/``, small JPEGs per image (a
thumbnail, the image at viewing size, one strip of per-class heatmaps) and the record as a ``<script>`` file
(browsers refuse ``fetch`` from ``file://`` but load scripts). The page holds only a compact index (name,
size, probabilities, ground truth) and shows 48 cards a page with lazily loaded thumbnails, so it stays light
for thousands of images. Building again only redoes images whose outputs changed.

Knows nothing of paddle. The per-image loops read one image at a time.
"""

from __future__ import annotations

import base64
import hashlib
import html
import itertools
import json
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import quote

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from . import viz
from .data.io import read_image, read_json_file, read_maps_file
from .errors import BadImageError, ChexcamError, DataError
from .metrics.localization import iobb, iou, point_in_boxes

logger = logging.getLogger(__name__)

INDEX = "index.html"
#: the viewer's files beside index.html
ASSETS = "viewer"
#: px, longest side of a gallery thumbnail, of the image in the detail view, of one heatmap tile
THUMB, VIEW, MAP_SIDE = 192, 640, 160
PAGE_SIZE = 48
#: JSON files of an output folder that are not per-image records
_NOT_RECORDS = {"summary.json", "results.json", "metrics.json", "train_summary.json"}
#: grey of pixels a map does not cover (outside the network's crop), as :func:`chexcam.viz.outside`
_OUTSIDE = 160
_HERE = os.path.dirname(os.path.abspath(__file__))


def _asset_text(name: str) -> str:
    with open(os.path.join(_HERE, "assets", name), encoding="utf-8") as fh:
        return fh.read()


def _script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` break-out, ASCII only)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).replace("</", "<\\/")


def asset_id(stem: str) -> str:
    """A file-name- and URL-safe name for a record's viewer files (a hash keeps mangled names unique)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:80]
    if safe != stem or safe.startswith("."):
        safe = f"{safe}-{hashlib.sha1(stem.encode('utf-8')).hexdigest()[:8]}"
    return safe


def _page(title: str, body: str, css: str = "", script: str = "") -> str:
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<meta name=\"generator\" content=\"chexcam\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n{_asset_text('base.css')}\n{css}\n</style>\n</head>\n"
            f"<body>\n{body}\n{script}\n</body>\n</html>\n")


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _write_jpeg(path: str, rgb: np.ndarray, quality: int = 85) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"cannot encode {path}")
    with open(path, "wb") as fh:
        fh.write(buf.tobytes())


def _fit(rgb: np.ndarray, side: int) -> np.ndarray:
    """Shrink so the longest side is at most ``side`` (never enlarge)."""
    h, w = rgb.shape[:2]
    s = side / max(h, w)
    if s >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, int(round(w * s))), max(1, int(round(h * s)))), interpolation=cv2.INTER_AREA)


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


# ---------------------------------------------------------------------------------------------
# reading an infer_cam.py folder


def read_records(outdir: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """``(stem, record)`` of every per-image JSON record in ``outdir``, by name; other JSON files are skipped."""
    for name in sorted(os.listdir(outdir)):
        if not name.endswith(".json") or name in _NOT_RECORDS:
            continue
        path = os.path.join(outdir, name)
        try:
            rec = read_json_file(path)
        except DataError as exc:
            logger.warning("viewer: skipped: %s", exc)
            continue
        if isinstance(rec, dict) and isinstance(rec.get("classes"), dict) and rec["classes"] and "image" in rec:
            yield name[:-5], rec


def folder_settings(outdir: str) -> Dict[str, Any]:
    """The drawing settings of the run that wrote ``outdir`` (its ``config.yaml``), or the defaults."""
    out = {"colormap": "jet", "alpha": 0.4, "tile": 256, "sort": False, "threshold": 0.5, "colorbar": True,
           "model": None}
    try:
        with open(os.path.join(outdir, "config.yaml"), encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError):
        return out
    infer = cfg.get("infer") or {}
    for key in ("colormap", "alpha", "tile", "sort", "threshold", "colorbar"):
        if infer.get(key) is not None:
            out[key] = infer[key]
    out["model"] = (cfg.get("model") or {}).get("name")
    if out["colormap"] not in viz.COLORMAPS:
        out["colormap"] = "jet"
    return out


def _mosaic_tiles(path: str, size: Tuple[int, int], probs: Sequence[float], settings: Dict[str, Any]
                  ) -> Optional[Tuple[np.ndarray, List[np.ndarray]]]:
    """The original and the per-class tiles (label order) of a mosaic by :func:`chexcam.viz.mosaic`, or ``None``
    when the PNG does not have the layout its record and config imply."""
    sheet = cv2.imread(path, cv2.IMREAD_COLOR)
    if sheet is None:
        return None
    sheet = cv2.cvtColor(sheet, cv2.COLOR_BGR2RGB)
    k, (w, h), pad = len(probs), size, 4
    cols = 5 if k + 1 > 4 else k + 1
    rows = int(math.ceil((k + 1) / cols))
    candidates = [int(settings["tile"])]
    inner = sheet.shape[0] - (rows + 1) * pad
    if inner > 0 and inner % rows == 0 and h >= w:  # an old folder without config.yaml: tile from the height
        candidates.append(inner // rows)
    for tile in candidates:
        s = tile / max(h, w)
        tw, th = max(1, int(round(w * s))), max(1, int(round(h * s)))
        grid_w = cols * tw + (cols + 1) * pad
        if sheet.shape[0] == rows * th + (rows + 1) * pad and sheet.shape[1] in (grid_w, grid_w + 58):
            break
    else:
        return None
    order = list(np.argsort(-np.asarray(probs), kind="stable")) if settings["sort"] else list(range(k))
    tiles = []
    for i in range(k + 1):
        r, c = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        tiles.append(sheet[y:y + th, x:x + tw])
    per_class: List[Optional[np.ndarray]] = [None] * k
    for pos, cls in enumerate(order):
        per_class[int(cls)] = tiles[pos + 1]
    return tiles[0], per_class  # type: ignore[return-value]


def _label_band(width: int, text: str) -> int:
    """Rows of the dark title band :func:`chexcam.viz.label_tile` draws on a tile of this width."""
    scale = max(0.35, width / 560.0)
    (_, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, int(round(scale * 1.6))))
    return th + base + 6


def _unblend(tile: np.ndarray, base: np.ndarray, alpha: float, title: str) -> np.ndarray:
    """The heatmap of a mosaic tile, recovered from ``tile = alpha * heat + (1 - alpha) * base``.

    The title band and drawn boxes (white) are filled in from their surroundings (the maps are smooth), and
    pixels drawn as "outside the crop" (:func:`chexcam.viz.outside`) become the viewer's grey.
    """
    t, b = tile.astype(np.float32), base.astype(np.float32)
    heat = np.clip((t - (1.0 - alpha) * b) / alpha, 0, 255).astype(np.uint8)
    outside = np.abs(t - (b * 0.45 + _OUTSIDE * 0.55)).max(axis=2) <= 2.0
    mask = (tile.min(axis=2) >= 250) & ~outside
    mask[:min(len(mask), _label_band(tile.shape[1], title))] = True
    heat = cv2.inpaint(heat, mask.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    heat[outside] = _OUTSIDE
    return heat


def _heat_strip(maps: np.ndarray, size: Tuple[int, int], colormap: str) -> np.ndarray:
    """Per-class heatmaps ``[K, H, W]`` -> one vertical strip of colorized tiles of ``size = (w, h)``; pixels
    a map does not cover (NaN) are grey."""
    tiles = []
    for m in maps:
        m = viz.resize_map(np.asarray(m, dtype=np.float32), size)
        heat = viz.colorize(m, colormap)
        heat[~np.isfinite(m)] = _OUTSIDE
        tiles.append(heat)
    return np.concatenate(tiles, axis=0)


def _build_assets(outdir: str, stem: str, rec: Dict[str, Any], settings: Dict[str, Any], aid: str) -> Dict[str, Any]:
    """Write (or keep, when newer than their sources) the viewer files of one record; returns its index entry."""
    adir = os.path.join(outdir, ASSETS)
    labels = list(rec["classes"])
    probs = [float(rec["classes"][c].get("probability", float("nan"))) for c in labels]
    w, h = (int(v) for v in rec.get("size", (0, 0)))
    src_json = os.path.join(outdir, stem + ".json")
    npz = os.path.join(outdir, stem + "_maps.npz")
    mosaic = os.path.join(outdir, stem + "_cam.png")
    f_view, f_thumb = os.path.join(adir, aid + ".jpg"), os.path.join(adir, aid + "_t.jpg")
    f_maps, f_rec = os.path.join(adir, aid + "_maps.jpg"), os.path.join(adir, aid + ".js")
    f_mode = os.path.join(adir, aid + ".mode")
    newest = max(_mtime(src_json), _mtime(npz), _mtime(mosaic))
    has_npz, has_mosaic = os.path.isfile(npz), os.path.isfile(mosaic)
    fresh = all(_mtime(f) >= newest for f in (f_rec, f_thumb, f_view, f_mode)) and (
        not (has_npz or has_mosaic) or _mtime(f_maps) >= newest)
    if not fresh:
        view = original = None
        try:
            original = read_image(rec["image"])
            view = _fit(original, VIEW)
        except (BadImageError, OSError, KeyError, TypeError) as exc:
            logger.debug("viewer: original of %s not readable (%s)", stem, exc)
        cut = _mosaic_tiles(mosaic, (w, h), probs, settings) if has_mosaic and w and h else None
        if view is None and cut is not None:
            view = cut[0]
        if view is not None:
            _write_jpeg(f_view, view, 88)
            _write_jpeg(f_thumb, _fit(view, THUMB), 82)
        strip, mode = None, ""
        if has_npz:
            try:
                maps = read_maps_file(npz)
                if maps.ndim == 3 and len(maps) == len(labels):
                    src = view if view is not None else np.zeros((max(h, 1), max(w, 1), 3), np.uint8)
                    mh, mw = _fit(src, MAP_SIDE).shape[:2]
                    strip, mode = _heat_strip(maps, (mw, mh), settings["colormap"]), "heat"
            except DataError as exc:
                logger.warning("viewer: %s", exc)
        if strip is None and cut is not None and all(t is not None for t in cut[1]):
            tiles, mode = cut[1], "mosaic"
            alpha = float(settings["alpha"])
            if original is not None and 0.05 <= alpha <= 0.95:
                th, tw = tiles[0].shape[:2]
                base = cv2.resize(original, (tw, th), interpolation=cv2.INTER_AREA)
                tiles = [_unblend(t, base, alpha, f"{c}: {100 * p:.1f}%") for t, c, p in zip(tiles, labels, probs)]
                mode = "unblended"
            strip = np.concatenate(tiles, axis=0)
        if strip is not None:
            _write_jpeg(f_maps, strip, 85)
        elif os.path.exists(f_maps):
            os.remove(f_maps)
        _write_text(f_mode, mode)
        _write_text(f_rec, f"chexcamRecord({_script_json(aid)},{_script_json(rec)});\n")
    mode = _read_mode(f_mode) if os.path.isfile(f_maps) else ""
    target = rec.get("target")
    return {
        "id": aid, "s": stem, "w": w, "h": h, "p": [round(p, 4) if math.isfinite(p) else 0.0 for p in probs],
        "t": [int(target.get(c, 0)) for c in labels] if isinstance(target, dict) else None,
        "m": mode, "o": int(os.path.isfile(f_view)), "j": quote(stem + ".json"),
        "c": quote(stem + "_cam.png") if has_mosaic else "",
    }


def _read_mode(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _colorbar(path: str, colormap: str) -> None:
    ramp = np.linspace(1.0, 0.0, 256, dtype=np.float32)[:, None].repeat(16, axis=1)
    viz.save_png(path, viz.colorize(ramp, colormap))


_VIEWER_BODY = """<header class="page"><h1 id="title"></h1><p id="meta"></p></header>
<main>
<noscript><p class="warn">This page needs JavaScript (in AI Studio / Jupyter: open it in a new browser tab,
or press "Trust HTML").</p></noscript>
<form class="controls" role="search" aria-label="Filter and sort the images" onsubmit="return false">
 <label>Finding <select id="finding"></select></label>
 <label>Probability &#8805; <input id="threshold" type="number" min="0" max="1" step="0.05" value="0.00"
   aria-describedby="thr-help">
  <input id="threshold-range" type="range" min="0" max="100" value="0" aria-label="Probability threshold (percent)">
 </label>
 <span id="thr-help" class="sr-only">Show only images whose probability of the selected finding (or, for any
 finding, the highest probability) is at least this value.</span>
 <label id="truth-wrap">Ground truth <select id="truth"><option value="all">all</option>
  <option value="pos">positive</option><option value="neg">negative</option></select></label>
 <label>Sort <select id="sort"><option value="desc">probability, high first</option>
  <option value="asc">probability, low first</option><option value="name">name</option></select></label>
 <label>Per page <select id="pagesize"><option>24</option><option>48</option><option>96</option>
  <option>192</option></select></label>
</form>
<p id="count" role="status" aria-live="polite"></p>
<nav class="pager" aria-label="Pages (top)"><button type="button" class="prev">&#9664; Previous</button>
 <span class="pageinfo"></span><button type="button" class="next">Next &#9654;</button></nav>
<ul id="grid" class="grid" aria-label="Images"></ul>
<nav class="pager" aria-label="Pages (bottom)"><button type="button" class="prev">&#9664; Previous</button>
 <span class="pageinfo"></span><button type="button" class="next">Next &#9654;</button></nav>
</main>
<dialog id="detail" aria-labelledby="d-title">
 <header><h2 id="d-title"></h2>
  <button type="button" id="d-prev-img" aria-label="Previous image (Page Up)">&#9664; image</button>
  <button type="button" id="d-next-img" aria-label="Next image (Page Down)">image &#9654;</button>
  <button type="button" id="d-close" aria-label="Close (Escape)">&#10005;</button></header>
 <div class="d-body">
  <section class="d-figure" aria-label="Image and class overlay">
   <div class="d-controls">
    <button type="button" id="cls-prev" aria-label="Previous class (left arrow)">&#9664;</button>
    <label>Overlay <select id="cls" aria-label="Class shown in the overlay"></select></label>
    <button type="button" id="cls-next" aria-label="Next class (right arrow)">&#9654;</button>
    <label>Opacity <input id="opacity" type="range" min="0" max="100" value="40"
      aria-label="Overlay opacity (percent)"><span id="opacity-val"></span></label>
    <label><input id="boxes" type="checkbox" checked> boxes</label>
   </div>
   <p id="d-status" class="mode" role="status" aria-live="polite"></p>
   <div class="stage">
    <figure class="xray" id="figure" tabindex="0"
      aria-label="Image with the class overlay; left and right arrow keys step through the classes">
     <img id="d-img" alt=""><div id="heat" class="heat" role="img" aria-label=""></div>
     <svg id="svg" xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="none" aria-hidden="true"></svg>
    </figure>
    <div class="cbar"><span>1 high</span><img src="__CBAR__" alt="Colour bar of the overlay: __CMAP__ colormap,
     top (1) is the class map's maximum, bottom (0) its minimum"><span>0 low</span></div>
   </div>
   <p id="d-mode" class="mode"></p>
   <p class="hint">Keys: &#8592; &#8594; class &#183; Page Up / Page Down image &#183; B boxes &#183; Esc close.
    <span id="boxinfo"></span> White boxes: predicted from the map; dot: its peak.</p>
  </section>
  <section class="d-side" aria-label="Probabilities and record">
   <h3>Probabilities <small class="note">(click a bar to overlay that class; black tick: decision
    threshold)</small></h3>
   <ol id="bars" class="bars"></ol>
   <h3>JSON record</h3>
   <p><a id="d-json" href="#" target="_blank" rel="noopener">open the .json file</a> &#183;
    <a id="d-mosaic" href="#" target="_blank" rel="noopener">open the mosaic PNG</a></p>
   <pre id="d-record" tabindex="0" aria-label="JSON record"></pre>
  </section>
 </div>
</dialog>"""


def write_viewer(outdir: str, title: Optional[str] = None, page_size: int = PAGE_SIZE,
                 progress: bool = False) -> str:
    """Build ``outdir/index.html`` (and ``outdir/viewer/``) from the records in an ``infer_cam.py`` folder.

    Returns the path of ``index.html``. Works on any such folder, old ones included; images whose files did
    not change since the last build are not redone.

    Raises:
        ChexcamError: ``outdir`` is not a folder.
    """
    if not os.path.isdir(outdir):
        raise ChexcamError(f"not a folder: {outdir}")
    settings = folder_settings(outdir)
    os.makedirs(os.path.join(outdir, ASSETS), exist_ok=True)
    _colorbar(os.path.join(outdir, ASSETS, "colorbar.png"), settings["colormap"])
    entries, labels, used, models = [], None, set(), set()
    n_files = sum(1 for n in os.listdir(outdir) if n.endswith(".json"))
    bar = tqdm(total=n_files, desc="viewer", unit="img", disable=not progress)
    records = read_records(outdir)
    # OpenCV decodes, resizes and encodes without the GIL: a few threads, fed a chunk at a time (flat memory)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        while True:
            chunk = list(itertools.islice(records, 64))
            if not chunk:
                break
            jobs = []
            for stem, rec in chunk:
                names = list(rec["classes"])
                if labels is None:
                    labels = names
                elif names != labels:
                    logger.warning("viewer: %s has classes %s, not those of the other records; skipped", stem, names)
                    continue
                aid = asset_id(stem)
                while aid in used:
                    aid += "_"
                used.add(aid)
                jobs.append((stem, rec, aid))
                models.add(f"{rec.get('model')} / {rec.get('method')}" + (
                    f" / {os.path.basename(str(rec['weights']))}" if rec.get("weights") else " / random weights"))
            for entry in pool.map(lambda job: _build_assets(outdir, job[0], job[1], settings, job[2]), jobs):
                entries.append(entry)
            bar.update(len(chunk))
    bar.close()
    labels = labels or []
    n = len(entries)
    data = {
        "title": title or f"chexcam viewer: {n} image{'s' if n != 1 else ''} of {os.path.basename(os.path.abspath(outdir))}",
        "meta": f"model / CAM method / weights: {'; '.join(sorted(models)) or 'n/a'}; decision threshold "
                f"{settings['threshold']}; {len(labels)} class{'es' if len(labels) != 1 else ''}",
        "labels": labels, "threshold": float(settings["threshold"]), "colormap": settings["colormap"],
        "alpha": float(settings["alpha"]), "assets": ASSETS, "pageSize": int(page_size),
        "hasTruth": any(e["t"] is not None for e in entries), "images": entries,
    }
    body = _VIEWER_BODY.replace("__CBAR__", f"{ASSETS}/colorbar.png").replace("__CMAP__", html.escape(settings["colormap"]))
    script = (f"<script type=\"application/json\" id=\"chexcam-data\">{_script_json(data)}</script>\n"
              f"<script>\n{_asset_text('viewer.js')}\n</script>")
    path = os.path.join(outdir, INDEX)
    _write_text(path, _page(data["title"], body, _asset_text("viewer.css"), script))
    logger.info("viewer: %s (%d images)", path, n)
    return path


# ---------------------------------------------------------------------------------------------
# report.html of eval.py


def _img_tag(path: str, alt: str, caption: str) -> str:
    with open(path, "rb") as fh:
        b64 = base64.b64encode(fh.read()).decode("ascii")
    return (f"<figure class=\"plot\"><img src=\"data:image/png;base64,{b64}\" alt=\"{html.escape(alt)}\">"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _num(v: Optional[float], nd: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def _ci(pair) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return "n/a"
    return f"{pair[0]:.3f} &#8211; {pair[1]:.3f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "") -> str:
    cap = f"<caption class=\"sr-only\">{html.escape(caption)}</caption>" if caption else ""
    th = "".join(f"<th scope=\"col\">{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{cap}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def write_report_html(outdir: str, metrics: Optional[Dict[str, Any]] = None, title: Optional[str] = None) -> str:
    """``outdir/report.html`` from ``metrics`` (default: ``outdir/metrics.json``) and the PNG plots beside it
    (embedded, so the file can be sent alone): the AUROC table with intervals, or the binary metrics and the
    confusion matrix, ROC curves, the reliability diagram with ECE per class, and the training curves."""
    if metrics is None:
        with open(os.path.join(outdir, "metrics.json"), encoding="utf-8") as fh:
            metrics = json.load(fh)
    esc = html.escape
    pct = int(round(100 * float(metrics.get("ci_level", 0.95))))
    parts = []
    ece = ((metrics.get("calibration") or {}).get("ece")) or {}
    if "binary" in metrics:
        b = metrics["binary"]
        (tn, fp), (fn, tp) = b["confusion"]
        label = next(iter(ece), None) or "positive"
        parts.append("<h2>Binary metrics</h2>" + _table(
            ["metric", f"value (threshold {b['threshold']:.2f})"],
            [["images (positives)", f"{b['n']} ({b['positives']})"], ["accuracy", _num(b["accuracy"])],
             ["precision", _num(b["precision"])], ["recall (sensitivity)", _num(b["recall"])],
             ["F1", _num(b["f1"])], [f"AUROC ({pct}% CI)", f"{_num(b['auroc'])} ({_ci(b.get('auroc_ci'))})"]]
            + ([["expected calibration error", _num(ece.get(label))]] if ece else []), "binary metrics"))
        parts.append("<h2>Confusion matrix</h2>" + _table(
            ["truth \\ predicted", "negative", "positive"],
            [["negative", str(tn), str(fp)], ["positive", str(fn), str(tp)]], "confusion matrix"))
    if metrics.get("per_class"):
        rows = []
        for r in metrics["per_class"]:
            name = esc(r["label"]) + ("" if r.get("model_class", r["label"]) == r["label"]
                                      else f" (model: {esc(r['model_class'])})")
            thr = "" if r.get("f1_threshold") is None else f" (t={r['f1_threshold']:.3f})"
            rows.append([name, str(r.get("positives", "")), _num(r.get("auroc")), _ci(r.get("auroc_ci")),
                         _num(r.get("chexnet_paper")), _num(r.get("f1"), 3) + thr, _num(ece.get(r["label"]), 3)])
        rows.append(["<b>mean</b>", "", f"<b>{_num(metrics.get('mean_auroc'))}</b>", _ci(metrics.get("mean_auroc_ci")),
                     _num(metrics.get("chexnet_paper_mean")), "",
                     _num((metrics.get("calibration") or {}).get("mean_ece"), 3)])
        parts.append("<h2>AUROC per finding</h2>" + _table(
            ["finding", "positives", "AUROC", f"{pct}% CI (bootstrap)", "CheXNet paper", "F1 (val threshold)", "ECE"],
            rows, "AUROC per finding with bootstrap intervals"))
    notes = list(metrics.get("notes") or [])
    if metrics.get("skipped"):
        notes.append(f"{metrics['skipped']} bad image(s) skipped: " + ", ".join(sorted(metrics.get("skipped_files") or {})))
    for lab, reason in (metrics.get("skipped_classes") or {}).items():
        notes.append(f"model class {lab} skipped on {metrics.get('dataset')}: {reason}")
    if notes:
        parts.append("<ul>" + "".join(f"<li class=\"note\">{esc(n)}</li>" for n in notes) + "</ul>")
    figures = [
        ("roc.png", "ROC curves", "ROC curves: true positive rate against false positive rate for each class",
         "scikit-learn RocCurveDisplay; AUROC in the legend."),
        ("confusion.png", "Confusion matrix (plot)", "Confusion matrix of the binary decision",
         "scikit-learn ConfusionMatrixDisplay at the decision threshold."),
        ("reliability.png", "Reliability diagram", "Reliability diagram: observed fraction of positives against "
         "mean predicted probability per bin, for each class", "scikit-learn CalibrationDisplay; the diagonal is "
         "perfect calibration, grey bars count images per bin, the expected calibration error (ECE) is in each title."),
        ("history.png", "Training curves", "Training curves: loss, validation AUROC and learning rate per epoch",
         "From history.jsonl: loss, validation AUROC, learning rate per epoch."),
    ]
    for name, heading, alt, cap in figures:
        p = os.path.join(outdir, name)
        if os.path.isfile(p):
            parts.append(f"<h2>{esc(heading)}</h2>" + _img_tag(p, alt, cap))
    split, n = metrics.get("split", "?"), metrics.get("images", "?")
    head = title or f"Evaluation on the {split} split ({n} images)"
    meta = " &#183; ".join(f"{name} {esc(str(metrics[key]))}" for key, name in (
        ("weights", "weights"), ("dataset", "dataset"), ("ten_crop", "ten-crop"), ("labels_release", "labels release"))
        if metrics.get(key) is not None)
    body = (f"<header class=\"page\"><h1>{esc(head)}</h1><p>{meta}</p></header>\n<main>\n" + "\n".join(parts)
            + "\n</main>")
    path = os.path.join(outdir, "report.html")
    _write_text(path, _page(head, body))
    return path


# ---------------------------------------------------------------------------------------------
# localization.html of eval_localization.py

_LOC_CSS = """
ul.loc { list-style: none; margin: 0; padding: 0; display: grid; gap: 14px;
         grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); }
ul.loc li { border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
ul.loc figure { position: relative; margin: 0; line-height: 0; background: #000; }
ul.loc img { width: 100%; height: auto; display: block; }
ul.loc svg { position: absolute; inset: 0; width: 100%; height: 100%; }
ul.loc .caption { padding: 6px 8px; font-size: 13px; }
rect.truth { fill: none; stroke: #19c37d; }
rect.pred { fill: none; stroke: #ff9f1c; stroke-dasharray: 6 4; }
circle.peak { fill: #ff9f1c; stroke: #000; }
.legend span { display: inline-block; margin-right: 14px; }
.sw { display: inline-block; width: 22px; height: 0; vertical-align: middle; margin-right: 4px; }
"""

_LOC_JS = """<script>
(function () {
  var sel = document.getElementById("finding"), only = document.getElementById("misses");
  function apply() {
    var n = 0;
    document.querySelectorAll("ul.loc > li").forEach(function (li) {
      var ok = (!sel.value || li.getAttribute("data-finding") === sel.value) &&
               (!only.checked || li.getAttribute("data-hit") === "0");
      li.hidden = !ok; if (ok) n++;
    });
    document.getElementById("count").textContent = n + " shown";
  }
  sel.addEventListener("change", apply); only.addEventListener("change", apply); apply();
})();
</script>"""


def write_localization_html(outdir: str, items: Dict[str, Dict[str, Tuple[Sequence, Sequence, Sequence[float]]]],
                            title: str = "Localization", lines: Sequence[str] = (), threshold: float = 0.1) -> str:
    """``outdir/localization.html``: every boxed image and finding with its hand-drawn boxes (green) and the
    boxes predicted from the map (orange, dashed) and the map's peak, with the best IoBB and IoU and whether
    the peak points into a truth box. ``items`` maps an image path to ``{finding: (truth, predicted, peak)}``
    in original pixels; view-size copies of the images go to ``outdir/boxes/``."""
    esc = html.escape
    bdir = os.path.join(outdir, "boxes")
    os.makedirs(bdir, exist_ok=True)
    cards, findings = [], set()
    for path, per in items.items():
        aid = asset_id(os.path.splitext(os.path.basename(path))[0])
        try:
            img = read_image(path)
        except BadImageError as exc:
            logger.warning("localization page: %s", exc)
            continue
        h, w = img.shape[:2]
        jpg = os.path.join(bdir, aid + ".jpg")
        if _mtime(jpg) < _mtime(path):
            _write_jpeg(jpg, _fit(img, VIEW), 85)
        sw = max(w, h) / 250
        for finding, (truth, pred, peak) in sorted(per.items()):
            findings.add(finding)
            best_iobb = max((iobb(p, t) for p in pred for t in truth), default=0.0)
            best_iou = max((iou(p, t) for p in pred for t in truth), default=0.0)
            hit = bool(peak is not None and len(peak) == 2 and point_in_boxes(peak, truth))
            shapes = "".join(f"<rect class=\"truth\" x=\"{t[0]:.1f}\" y=\"{t[1]:.1f}\" width=\"{t[2] - t[0]:.1f}\" "
                             f"height=\"{t[3] - t[1]:.1f}\" stroke-width=\"{1.6 * sw:.1f}\"/>" for t in truth)
            shapes += "".join(f"<rect class=\"pred\" x=\"{p[0]:.1f}\" y=\"{p[1]:.1f}\" width=\"{p[2] - p[0]:.1f}\" "
                              f"height=\"{p[3] - p[1]:.1f}\" stroke-width=\"{1.6 * sw:.1f}\"/>" for p in pred)
            if peak is not None and len(peak) == 2:
                shapes += (f"<circle class=\"peak\" cx=\"{peak[0]:.1f}\" cy=\"{peak[1]:.1f}\" r=\"{3 * sw:.1f}\" "
                           f"stroke-width=\"{0.8 * sw:.1f}\"/>")
            name = os.path.basename(path)
            alt = (f"{name}, {finding}: {len(truth)} hand-drawn box(es), {len(pred)} predicted box(es), "
                   f"best IoBB {best_iobb:.2f}")
            cards.append(
                f"<li data-finding=\"{esc(finding)}\" data-hit=\"{int(best_iobb >= threshold)}\"><figure>"
                f"<img src=\"boxes/{quote(aid)}.jpg\" loading=\"lazy\" alt=\"{esc(alt)}\">"
                f"<svg viewBox=\"0 0 {w} {h}\" preserveAspectRatio=\"none\" aria-hidden=\"true\">{shapes}</svg>"
                f"</figure><div class=\"caption\"><b>{esc(finding)}</b> &#183; {esc(name)}<br>best IoBB "
                f"{best_iobb:.2f} &#183; best IoU {best_iou:.2f} &#183; pointing "
                f"{'<span class=ok>hit</span>' if hit else '<span class=miss>miss</span>'}</div></li>")
    options = "".join(f"<option>{esc(f)}</option>" for f in sorted(findings))
    head = "".join(f"<p>{esc(line)}</p>" for line in lines)
    body = (f"<header class=\"page\"><h1>{esc(title)}</h1>{head}</header>\n<main>\n"
            "<p class=\"legend\"><span><i class=\"sw\" style=\"border-top:3px solid #19c37d\"></i>hand-drawn box "
            "(truth)</span><span><i class=\"sw\" style=\"border-top:3px dashed #ff9f1c\"></i>predicted from the "
            "map</span><span><span style=\"color:#ff9f1c\">&#9679;</span> map peak</span></p>\n"
            f"<form class=\"controls\" onsubmit=\"return false\"><label>Finding <select id=\"finding\">"
            f"<option value=\"\">all</option>{options}</select></label> <label><input type=\"checkbox\" "
            f"id=\"misses\"> only misses (best IoBB &lt; {threshold})</label> <span id=\"count\" role=\"status\">"
            f"</span></form>\n<ul class=\"loc\">{''.join(cards)}</ul>\n</main>")
    path = os.path.join(outdir, "localization.html")
    _write_text(path, _page(title, body, _LOC_CSS, _LOC_JS))
    return path


__all__ = ["write_viewer", "write_report_html", "write_localization_html", "read_records", "folder_settings",
           "asset_id", "INDEX", "ASSETS"]
