/* chexcam viewer: a gallery of explained images with filters, paging and a detail dialog.
   Plain JavaScript, no library, no network: everything it reads is the JSON block in this page and files
   under the assets folder beside it (thumbnails, images, per-class overlay strips, per-image records loaded
   as <script> files, which browsers allow from file:// where fetch() is refused). */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("chexcam-data").textContent);
  var L = D.labels, K = L.length, A = D.assets + "/";
  var $ = function (id) { return document.getElementById(id); };
  var records = {};          // id -> full JSON record, filled by the record scripts
  var state = { finding: -1, thr: 0, truth: "all", sort: "desc", page: 0, size: D.pageSize };
  var view = [];             // the filtered, sorted entries
  var cur = { i: -1, k: 0, opener: null };

  function pct(p) { return (100 * p).toFixed(1) + "%"; }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var a in attrs) { if (attrs[a] !== null && attrs[a] !== undefined) e.setAttribute(a, attrs[a]); }
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function score(e) {
    if (state.finding >= 0) return e.p[state.finding];
    var m = -1; for (var k = 0; k < K; k++) if (e.p[k] > m) m = e.p[k];
    return m;
  }
  function truthNames(e) {
    if (!e.t) return null;
    var out = []; for (var k = 0; k < K; k++) if (e.t[k] === 1) out.push(L[k]);
    return out;
  }
  function truthText(e) {
    var t = truthNames(e);
    if (t === null) return null;
    if (K === 1) return t.length ? L[0] : "not " + L[0];
    return t.length ? t.join(", ") : "no finding";
  }

  // ---- the gallery --------------------------------------------------------------------------------
  function keep(e) {
    if (score(e) < state.thr) return false;
    if (state.truth === "all" || !e.t) return state.truth === "all";
    var pos = state.finding >= 0 ? e.t[state.finding] === 1 : e.t.indexOf(1) >= 0;
    return state.truth === "pos" ? pos : !pos;
  }
  function refilter() {
    view = D.images.filter(keep);
    if (state.sort === "name") view.sort(function (a, b) { return a.s < b.s ? -1 : a.s > b.s ? 1 : 0; });
    else {
      var sgn = state.sort === "asc" ? 1 : -1;
      view.sort(function (a, b) { return sgn * (score(a) - score(b)) || (a.s < b.s ? -1 : 1); });
    }
    var pages = Math.max(1, Math.ceil(view.length / state.size));
    if (state.page >= pages) state.page = pages - 1;
    render();
  }
  function card(e, idx) {
    var li = el("li", { "class": "card", "data-stem": e.s });
    var order = []; for (var k = 0; k < K; k++) order.push(k);
    order.sort(function (a, b) { return e.p[b] - e.p[a]; });
    var top = order.slice(0, Math.min(3, K));
    if (state.finding >= 0 && top.indexOf(state.finding) < 0) top.unshift(state.finding);
    var label = e.s + ": " + top.map(function (k) { return L[k] + " " + pct(e.p[k]); }).join(", ");
    var tt = truthText(e);
    if (tt !== null) label += "; ground truth " + tt;
    var b = el("button", { "class": "open", type: "button", "aria-label": "Open " + label });
    if (e.o) {
      b.appendChild(el("img", { src: A + e.id + "_t.jpg", loading: "lazy", decoding: "async",
                                alt: "Thumbnail of " + e.s + (K === 1 ? "" : " (X-ray)") }));
    } else {
      b.appendChild(el("span", { "class": "placeholder" }, "no image"));
    }
    b.appendChild(el("span", { "class": "name" }, e.s));
    b.addEventListener("click", function (ev) { ev.stopPropagation(); openDetail(idx, b); });
    li.appendChild(b);
    var ul = el("ul", { "class": "top" });
    top.forEach(function (k) {
      var row = el("li", { "class": (k === state.finding ? "sel " : "") + (e.p[k] >= D.threshold ? "pos" : "") });
      row.appendChild(el("span", { "class": "n" }, L[k]));
      row.appendChild(el("span", { "class": "p" }, pct(e.p[k])));
      ul.appendChild(row);
    });
    li.appendChild(ul);
    if (tt !== null) {
      var p = el("p", { "class": "truth" }, "truth: ");
      p.appendChild(el("b", null, tt));
      if (K === 1) {
        var right = (e.p[0] >= D.threshold) === (e.t[0] === 1);
        p.appendChild(el("span", { "class": right ? "ok" : "miss" }, right ? "  \u2713 correct" : "  \u2717 wrong"));
      }
      li.appendChild(p);
    }
    li.addEventListener("click", function () { openDetail(idx, b); });
    return li;
  }
  function render() {
    var grid = $("grid");
    grid.textContent = "";
    var start = state.page * state.size, end = Math.min(view.length, start + state.size);
    var frag = document.createDocumentFragment();
    for (var i = start; i < end; i++) frag.appendChild(card(view[i], i));
    grid.appendChild(frag);
    var pages = Math.max(1, Math.ceil(view.length / state.size));
    var what = state.finding >= 0 ? L[state.finding] : "any finding";
    $("count").textContent = view.length + " of " + D.images.length + " images match (" + what +
      " \u2265 " + state.thr.toFixed(2) + (state.truth === "all" ? "" : ", truth " + state.truth) + ")" +
      (view.length ? "; showing " + (start + 1) + "\u2013" + end : "");
    $("count").setAttribute("data-matches", String(view.length));
    document.querySelectorAll(".pageinfo").forEach(function (s) { s.textContent = "page " + (state.page + 1) + " of " + pages; });
    document.querySelectorAll(".prev").forEach(function (b) { b.disabled = state.page === 0; });
    document.querySelectorAll(".next").forEach(function (b) { b.disabled = state.page >= pages - 1; });
  }

  function setupControls() {
    var f = $("finding");
    if (K > 1) f.appendChild(el("option", { value: "-1" }, "any finding (highest probability)"));
    L.forEach(function (lab, k) { f.appendChild(el("option", { value: String(k) }, lab)); });
    if (K === 1) state.finding = 0;
    f.value = String(state.finding);
    f.addEventListener("change", function () { state.finding = parseInt(f.value, 10); state.page = 0; refilter(); });
    var num = $("threshold"), rng = $("threshold-range");
    function setThr(v, src) {
      v = Math.min(1, Math.max(0, isNaN(v) ? 0 : v));
      state.thr = v; state.page = 0;
      if (src !== num) num.value = v.toFixed(2);
      if (src !== rng) rng.value = String(Math.round(v * 100));
      refilter();
    }
    num.addEventListener("input", function () { setThr(parseFloat(num.value), num); });
    rng.addEventListener("input", function () { setThr(parseInt(rng.value, 10) / 100, rng); });
    var truth = $("truth");
    if (!D.hasTruth) $("truth-wrap").hidden = true;
    truth.addEventListener("change", function () { state.truth = truth.value; state.page = 0; refilter(); });
    $("sort").addEventListener("change", function () { state.sort = $("sort").value; refilter(); });
    var size = $("pagesize");
    if (!Array.prototype.some.call(size.options, function (o) { return o.value === String(state.size); }))
      size.insertBefore(el("option", { value: String(state.size) }, String(state.size)), size.firstChild);
    size.value = String(state.size);
    size.addEventListener("change", function () { state.size = parseInt(size.value, 10); state.page = 0; refilter(); });
    document.querySelectorAll(".prev").forEach(function (b) {
      b.addEventListener("click", function () { if (state.page > 0) { state.page--; render(); } });
    });
    document.querySelectorAll(".next").forEach(function (b) {
      b.addEventListener("click", function () { state.page++; refilter(); });
    });
  }

  // ---- the detail dialog --------------------------------------------------------------------------
  window.chexcamRecord = function (id, rec) { records[id] = rec; if (cur.i >= 0 && view[cur.i].id === id) showRecord(); };
  function loadRecord(e) {
    if (records[e.id]) { showRecord(); return; }
    $("d-record").textContent = "loading " + e.s + ".json \u2026";
    var s = el("script", { src: A + e.id + ".js" });
    s.onerror = function () { $("d-record").textContent = "record not found: " + A + e.id + ".js"; };
    document.head.appendChild(s);
  }
  function showRecord() {
    var e = view[cur.i], rec = records[e.id];
    if (!rec) return;
    $("d-record").textContent = JSON.stringify(rec, null, 1);
    drawBoxes();
  }
  function drawBoxes() {
    var e = view[cur.i], svg = $("svg"), rec = records[e.id];
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", "0 0 " + e.w + " " + e.h);
    if (!$("boxes").checked || !rec || !rec.classes) return;
    var c = rec.classes[L[cur.k]];
    if (!c) return;
    var ns = "http://www.w3.org/2000/svg", sw = Math.max(e.w, e.h) / 300;
    (c.boxes || []).forEach(function (b) {
      ["pred halo", "pred"].forEach(function (cls) {
        var r = document.createElementNS(ns, "rect");
        r.setAttribute("class", cls);
        r.setAttribute("x", b[0]); r.setAttribute("y", b[1]);
        r.setAttribute("width", Math.max(0, b[2] - b[0])); r.setAttribute("height", Math.max(0, b[3] - b[1]));
        r.setAttribute("style", "stroke-width:" + (cls === "pred" ? 1.2 * sw : 2.6 * sw));
        svg.appendChild(r);
      });
    });
    if (c.peak) {
      var p = document.createElementNS(ns, "circle");
      p.setAttribute("class", "peak"); p.setAttribute("cx", c.peak[0]); p.setAttribute("cy", c.peak[1]);
      p.setAttribute("r", 2.2 * sw); p.setAttribute("style", "stroke-width:" + 0.7 * sw);
      svg.appendChild(p);
    }
    $("boxinfo").textContent = (c.boxes || []).length + " box(es) for " + L[cur.k];
  }
  function showClass() {
    var e = view[cur.i], k = cur.k, heat = $("heat");
    $("cls").value = String(k);
    if (e.m) {
      heat.hidden = false;
      heat.style.backgroundImage = "url('" + A + e.id + "_maps.jpg')";
      heat.style.backgroundSize = "100% " + (K * 100) + "%";
      heat.style.backgroundPosition = "0 " + (K > 1 ? (100 * k / (K - 1)) : 0) + "%";
      heat.setAttribute("aria-label", "Class activation map of " + L[k] + " (" + pct(e.p[k]) + "), colormap " +
        D.colormap + ", opacity " + $("opacity").value + "%: red is high, blue is low; see the colour bar");
    } else {
      heat.hidden = true;
    }
    $("d-status").textContent = L[k] + ": " + pct(e.p[k]) + (e.p[k] >= D.threshold ? " (positive)" : "") +
      (e.t ? "; ground truth " + (e.t[k] === 1 ? "positive" : "negative") : "");
    document.querySelectorAll("#bars button").forEach(function (b) {
      b.setAttribute("aria-pressed", b.getAttribute("data-k") === String(k) ? "true" : "false");
    });
    drawBoxes();
  }
  function setOpacity() {
    var v = parseInt($("opacity").value, 10);
    $("heat").style.opacity = String(v / 100);
    $("opacity-val").textContent = v + "%";
  }
  function bars(e) {
    var ol = $("bars");
    ol.textContent = "";
    var order = []; for (var k = 0; k < K; k++) order.push(k);
    order.sort(function (a, b) { return e.p[b] - e.p[a]; });
    order.forEach(function (k) {
      var li = el("li");
      var b = el("button", { type: "button", "data-k": String(k), "aria-pressed": "false",
                             "aria-label": L[k] + " " + pct(e.p[k]) + (e.t ? (e.t[k] === 1 ? ", truth positive" : ", truth negative") : "") });
      b.appendChild(el("span", { "class": "name" }, L[k]));
      var tr = el("span", { "class": "track" });
      var fill = el("span", { "class": "fill" + (e.p[k] >= D.threshold ? " pos" : "") });
      fill.style.width = (100 * e.p[k]).toFixed(2) + "%";
      var thr = el("span", { "class": "thr", title: "decision threshold " + D.threshold });
      thr.style.left = (100 * D.threshold) + "%";
      tr.appendChild(fill); tr.appendChild(thr);
      b.appendChild(tr);
      b.appendChild(el("span", { "class": "val" }, pct(e.p[k])));
      b.appendChild(el("span", { "class": "gt" }, e.t && e.t[k] === 1 ? "truth" : ""));
      b.addEventListener("click", function () { cur.k = k; showClass(); });
      li.appendChild(b);
      ol.appendChild(li);
    });
  }
  function openDetail(i, opener) {
    var e = view[i], dlg = $("detail");
    cur.i = i; cur.opener = opener || cur.opener;
    if (cur.k >= K) cur.k = 0;
    if (state.finding >= 0) cur.k = state.finding;
    else { var best = 0; for (var k = 1; k < K; k++) if (e.p[k] > e.p[best]) best = k; cur.k = best; }
    $("d-title").textContent = e.s + " (" + (i + 1) + " of " + view.length + ")";
    var img = $("d-img");
    img.alt = e.o ? "Original image " + e.s + " (" + e.w + " x " + e.h + " px)" : "original image not available";
    img.src = e.o ? A + e.id + ".jpg" : "";
    $("d-json").href = e.j;
    $("d-mosaic").href = e.c || "#";
    $("d-mosaic").hidden = !e.c;
    $("d-mode").textContent = {
      heat: "",
      unblended: "Heatmaps recovered from the mosaic PNG (maps were not saved; approximate under the tile titles). " +
        "Run infer_cam.py with -o infer.save_npz=true for exact maps.",
      mosaic: "Overlays are the mosaic's own tiles (the original image was not found); the slider fades them in.",
      "": "No maps or mosaic found for this image: no overlay."
    }[e.m || ""];
    $("opacity").value = String(e.m === "mosaic" ? 100 : Math.round(100 * D.alpha));
    setOpacity();
    $("d-prev-img").disabled = i === 0;
    $("d-next-img").disabled = i >= view.length - 1;
    bars(e);
    showClass();
    $("d-record").textContent = "";
    loadRecord(e);
    if (!dlg.open) { dlg.showModal(); $("figure").focus(); }
    fitFigure();
  }
  function fitFigure() {
    // the image is drawn at the largest size that fits the panel (small cells are enlarged too); the overlay
    // and the boxes follow because they fill the figure
    if (cur.i < 0) return;
    var e = view[cur.i], img = $("d-img"), stage = $("figure").parentNode;
    var maxW = Math.max(160, stage.clientWidth - 64), maxH = Math.max(160, window.innerHeight * 0.66);
    var s = Math.min(maxW / Math.max(1, e.w), maxH / Math.max(1, e.h));
    img.style.width = Math.round(e.w * s) + "px";
    img.style.height = Math.round(e.h * s) + "px";
  }
  function step(d) { cur.k = (cur.k + d + K) % K; showClass(); }
  function stepImage(d) {
    var j = cur.i + d;
    if (j < 0 || j >= view.length) return;
    var page = Math.floor(j / state.size);
    if (page !== state.page) { state.page = page; render(); }
    openDetail(j, null);
  }
  function setupDetail() {
    var cls = $("cls"), dlg = $("detail");
    L.forEach(function (lab, k) { cls.appendChild(el("option", { value: String(k) }, lab)); });
    cls.addEventListener("change", function () { cur.k = parseInt(cls.value, 10); showClass(); });
    $("cls-prev").addEventListener("click", function () { step(-1); });
    $("cls-next").addEventListener("click", function () { step(1); });
    $("opacity").addEventListener("input", function () { setOpacity(); showClass(); });
    $("boxes").addEventListener("change", drawBoxes);
    $("d-close").addEventListener("click", function () { dlg.close(); });
    $("d-prev-img").addEventListener("click", function () { stepImage(-1); });
    $("d-next-img").addEventListener("click", function () { stepImage(1); });
    window.addEventListener("resize", fitFigure);
    dlg.addEventListener("close", function () {
      cur.i = -1;
      var o = cur.opener; cur.opener = null;
      if (o && document.body.contains(o)) o.focus();
    });
    dlg.addEventListener("keydown", function (ev) {
      var t = ev.target, tag = t && t.tagName;
      // a range input keeps all arrows, a select keeps up/down; everywhere else arrows step through classes
      var range = tag === "INPUT" && t.type === "range", select = tag === "SELECT";
      var horiz = ev.key === "ArrowRight" || ev.key === "ArrowLeft", vert = ev.key === "ArrowDown" || ev.key === "ArrowUp";
      if ((horiz && !range) || (vert && !range && !select)) {
        step(ev.key === "ArrowRight" || ev.key === "ArrowDown" ? 1 : -1);
        ev.preventDefault();
      } else if (ev.key === "PageDown") { stepImage(1); ev.preventDefault(); }
      else if (ev.key === "PageUp") { stepImage(-1); ev.preventDefault(); }
      else if ((ev.key === "b" || ev.key === "B") && tag !== "INPUT") { $("boxes").checked = !$("boxes").checked; drawBoxes(); }
    });
  }

  $("title").textContent = D.title;
  $("meta").textContent = D.meta;
  setupControls();
  setupDetail();
  refilter();
  document.documentElement.setAttribute("data-ready", "1");
})();
