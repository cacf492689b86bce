"""Convert public CheXNet / DenseNet checkpoints into chexcam ``.pdparams`` files, with a JSON report.

Three sources are understood (``fmt="auto"`` tells them apart by their key names):

``chexnet_pth``
    The public PyTorch CheXNet release (arnoweng/CheXNet ``model.pth.tar``): a dict whose
    ``state_dict`` has the DataParallel ``module.`` prefix, ``densenet121.features.*`` keys with the
    torchvision < 0.4 names (``norm.1``, ``relu.1``, ``conv.1``...) and the head
    ``densenet121.classifier.0.weight/bias`` (a Linear before a Sigmoid).
``torchvision``
    A ``torchvision.models.densenet*`` state dict (current names, head ``classifier.*`` of any size).
``paddle``
    The Paddle reproduction's ``.pdparams`` (jm12138/Paddle-CheXNet, saved by ``paddle.Model``): the
    paddle.vision / PaddleClas DenseNet structure under ``densenet121.``, head ``densenet121.out.0.*``;
    the PaddleClas parameter names (``conv1_weights``, ``conv2_1_x1_bn_scale``, ``fc_weights``...) too.

PyTorch ``Linear`` weights ``[K, C]`` are transposed to paddle's ``[C, K]``; BatchNorm
``running_mean``/``running_var`` become paddle's ``_mean``/``_variance``; ``num_batches_tracked`` is
dropped. Any source key left unmapped, any chexcam key left unfilled and any shape that does not fit
stops the conversion with a :class:`~chexcam.errors.WeightsError` naming them; nothing is written then.
Every source is read by :mod:`chexcam.serialization`, which needs no torch (both ``torch.save`` formats,
the legacy one of the 2017 release included) and refuses a pickle that names anything but tensors,
arrays and containers; there is no option to trust a file more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import serialization
from .errors import WeightsError
from .utils import atomic_path

logger = logging.getLogger(__name__)

FORMATS = ("auto", "chexnet_pth", "torchvision", "paddle")

#: DenseNet depth from the number of dense layers per block (torchvision and paddle.vision agree).
_DEPTH_OF_BLOCKS = {(6, 12, 24, 16): 121, (6, 12, 36, 24): 161, (6, 12, 32, 32): 169, (6, 12, 48, 32): 201,
                    (6, 12, 64, 48): 264}

_BN_TORCH = {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}
_BN_PADDLECLAS = {"scale": "weight", "offset": "bias", "mean": "_mean", "variance": "_variance"}


def sha256_of(path: str) -> str:
    """Hex sha256 of a file (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# reading


def read_source(path: str) -> Dict[str, np.ndarray]:
    """The flat ``name -> array`` dict of a checkpoint file (torch or paddle), unwrapped.

    The file is read by :func:`chexcam.serialization.load` (the format is told by its content; nothing
    in it is executed). Wrappers ``{"state_dict": ...}``, ``{"model": ...}`` and
    ``{"model_state_dict": ...}`` are unwrapped.
    """
    if not os.path.isfile(path):
        raise WeightsError(f"checkpoint not found: {path} (see pretrained/README.md for where to get one)")
    _, obj = serialization.load(path)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} does not hold a dict of tensors (got {type(obj).__name__})")
    out: Dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(value, np.ndarray):
            raise WeightsError(f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor")
        out[str(key)] = value
    if not out:
        raise WeightsError(f"{path} holds no tensors")
    return out


# ---------------------------------------------------------------------------------------------
# key mapping: source name -> (chexcam name, transform)

_OLD_TV = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var"
                     r"|num_batches_tracked))$")


def _strip_prefixes(keys: List[str], anchor: str) -> Tuple[Dict[str, str], str]:
    """Remove ``module.`` (DataParallel) and whatever precedes ``anchor``; returns new->old and the prefix."""
    out: Dict[str, str] = {}
    prefixes = set()
    for k in keys:
        s = k
        while s.startswith("module."):
            s = s[len("module."):]
        i = s.find(anchor)
        if i > 0:
            prefixes.add(k[: len(k) - len(s) + i])
            s = s[i:]
        elif i < 0 and "classifier" in s:
            j = s.find("classifier")
            prefixes.add(k[: len(k) - len(s) + j])
            s = s[j:]
        out[s] = k
    return out, ",".join(sorted(prefixes))


def _map_torch(name: str) -> Optional[Tuple[str, str]]:
    """torchvision DenseNet name (new style) -> (chexcam name, transform) or None."""
    m = re.fullmatch(r"features\.conv0\.weight", name)
    if m:
        return "backbone.conv1_func._conv.weight", "none"
    m = re.fullmatch(r"features\.norm0\.(\w+)", name)
    if m and m.group(1) in _BN_TORCH:
        return f"backbone.conv1_func._batch_norm.{_BN_TORCH[m.group(1)]}", "none"
    m = re.fullmatch(r"features\.denseblock(\d+)\.denselayer(\d+)\.(norm|conv)([12])\.(\w+)", name)
    if m:
        b, lyr, kind, i, leaf = int(m.group(1)) + 1, int(m.group(2)), m.group(3), m.group(4), m.group(5)
        base = f"backbone.db_conv_{b}.conv{b}_{lyr}.bn_ac_func{i}"
        if kind == "conv" and leaf == "weight":
            return f"{base}._conv.weight", "none"
        if kind == "norm" and leaf in _BN_TORCH:
            return f"{base}._batch_norm.{_BN_TORCH[leaf]}", "none"
        return None
    m = re.fullmatch(r"features\.transition(\d+)\.(norm|conv)\.(\w+)", name)
    if m:
        base = f"backbone.tr_conv{int(m.group(1)) + 1}_blk.conv_ac_func"
        if m.group(2) == "conv" and m.group(3) == "weight":
            return f"{base}._conv.weight", "none"
        if m.group(2) == "norm" and m.group(3) in _BN_TORCH:
            return f"{base}._batch_norm.{_BN_TORCH[m.group(3)]}", "none"
        return None
    m = re.fullmatch(r"features\.norm5\.(\w+)", name)
    if m and m.group(1) in _BN_TORCH:
        return f"backbone.batch_norm.{_BN_TORCH[m.group(1)]}", "none"
    m = re.fullmatch(r"classifier(?:\.0)?\.(weight|bias)", name)
    if m:
        return f"head.{m.group(1)}", "transpose" if m.group(1) == "weight" else "none"
    return None


def _map_paddle(name: str) -> Optional[Tuple[str, str]]:
    """paddle.vision / PaddleClas structured name (prefix removed) -> (chexcam name, transform) or None."""
    m = re.fullmatch(r"out(?:\.0)?\.(weight|bias)", name)
    if m:
        return f"head.{m.group(1)}", "none"
    if re.match(r"(conv1_func|db_conv_\d+|tr_conv\d+_blk|batch_norm)\.", name):
        return f"backbone.{name}", "none"
    return None


def _map_paddleclas_param(name: str) -> Optional[Tuple[str, str]]:
    """PaddleClas parameter names (``conv2_1_x1_bn_scale``, ``fc_weights``...) -> (chexcam name, transform)."""
    if name in ("fc_weights", "fc_offset"):
        return ("head.weight" if name == "fc_weights" else "head.bias"), "none"
    m = re.fullmatch(r"(conv\d+(?:_\d+_x[12]|_blk)?|conv1)_(weights|bn_scale|bn_offset|bn_mean|bn_variance)", name)
    if not m:
        return None
    stem, leaf = m.group(1), m.group(2)
    leaf_name = "_conv.weight" if leaf == "weights" else "_batch_norm." + _BN_PADDLECLAS[leaf[3:]]
    if stem == "conv1":
        return f"backbone.conv1_func.{leaf_name}", "none"
    m2 = re.fullmatch(r"conv(\d+)_(\d+)_x([12])", stem)
    if m2:
        b, lyr, i = m2.groups()
        return f"backbone.db_conv_{b}.conv{b}_{lyr}.bn_ac_func{i}.{leaf_name}", "none"
    m2 = re.fullmatch(r"conv(\d+)_blk", stem)
    if m2:
        if leaf != "weights" and stem == "conv5_blk":  # the final norm has no conv
            return f"backbone.batch_norm.{_BN_PADDLECLAS[leaf[3:]]}", "none"
        return f"backbone.tr_conv{m2.group(1)}_blk.conv_ac_func.{leaf_name}", "none"
    return None


def detect_format(keys: List[str]) -> str:
    """``chexnet_pth``, ``torchvision`` or ``paddle`` from the key names; WeightsError when none fits."""
    joined = "\n".join(keys)
    if "features.conv0" in joined or "features.denseblock" in joined:
        if re.search(r"denselayer\d+\.(norm|conv)\.[12]\.", joined):
            return "chexnet_pth"
        return "torchvision"
    if "conv1_func" in joined or "conv1_weights" in joined:
        return "paddle"
    raise WeightsError(f"unrecognised checkpoint layout (first keys: {', '.join(keys[:3])}); expected a "
                       "torchvision DenseNet, the PyTorch CheXNet release or a paddle.vision/PaddleClas DenseNet")


def map_keys(src: Dict[str, np.ndarray], fmt: str) -> Tuple[List[Dict[str, Any]], List[str], List[str], str]:
    """Map source keys to chexcam keys.

    Returns ``(mapping, ignored, unmapped, prefix)``: one record per mapped tensor (``source``,
    ``target``, ``transform``), the deliberately dropped keys (``num_batches_tracked``), the source keys
    that map to nothing, and the stripped prefix.
    """
    keys = list(src)
    if fmt in ("chexnet_pth", "torchvision"):
        renamed: Dict[str, str] = {}
        for k in keys:
            m = _OLD_TV.match(k)
            # torchvision < 0.4 names: "norm.1" -> "norm1" (the same rule torchvision's own loader applies)
            renamed[m.group(1) + m.group(2) if m else k] = k
        stripped, prefix = _strip_prefixes(list(renamed), "features.")
        stripped = {new: renamed[mid] for new, mid in stripped.items()}
        mapper = _map_torch
    else:
        first = next((k for k in keys if "conv1_func." in k), None)
        # structured names sit under a wrapper such as "densenet121."; PaddleClas parameter names have none
        prefix = first[: first.index("conv1_func.")] if first is not None else ""
        stripped = {(k[len(prefix):] if prefix and k.startswith(prefix) else k): k for k in keys}
        mapper = _map_paddle if first is not None else _map_paddleclas_param
    if len(stripped) != len(keys):  # two names became one once prefixes and old spellings were removed
        kept = set(stripped.values())
        lost = [k for k in keys if k not in kept]
        raise WeightsError(f"{len(lost)} source keys duplicate others once prefixes are removed: "
                           f"{', '.join(lost[:5])}")
    mapping, ignored, unmapped = [], [], []
    for name, original in stripped.items():
        if name.endswith("num_batches_tracked"):
            ignored.append(original)
            continue
        hit = mapper(name)
        if hit is None:
            unmapped.append(original)
        else:
            mapping.append({"source": original, "target": hit[0], "transform": hit[1]})
    return mapping, ignored, unmapped, prefix


def _blocks_of(targets: List[str]) -> Tuple[int, ...]:
    counts: Dict[int, int] = {}
    for t in targets:
        m = re.match(r"backbone\.db_conv_(\d+)\.conv\d+_(\d+)\.", t)
        if m:
            counts[int(m.group(1))] = max(counts.get(int(m.group(1)), 0), int(m.group(2)))
    return tuple(counts[b] for b in sorted(counts))


def _listing(what: str, items: List[str]) -> Optional[str]:
    if not items:
        return None
    shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
    return f"{len(items)} {what}: {shown}"


def _fail(path: str, *parts: Optional[str]) -> None:
    """Raise one WeightsError listing every problem found, or return when there is none."""
    found = [p for p in parts if p]
    if found:
        raise WeightsError(f"cannot convert {path}: " + "; ".join(found))


def convert_state(path: str, fmt: str = "auto", model_name: Optional[str] = None, num_classes: Optional[int] = None,
                  output_stride: int = 32):
    """Read ``path`` and return ``(state, report)``: a complete chexcam state dict and its JSON report.

    Args:
        path: source checkpoint (``.pth``/``.pth.tar``/``.pt`` for PyTorch, ``.pdparams`` for paddle).
        fmt: one of :data:`FORMATS`.
        model_name: registered chexcam model to fill; ``None`` derives it from the DenseNet depth.
        num_classes: expected head size; ``None`` takes the source's.
        output_stride: the target model's output stride (does not change parameter shapes).

    Raises:
        WeightsError: unreadable file, unknown layout, or keys/shapes that do not fit (all listed).
    """
    if fmt not in FORMATS:
        raise WeightsError(f"unknown source format '{fmt}'; expected one of {', '.join(FORMATS)}")
    src = read_source(path)
    detected = detect_format(list(src))
    if fmt != "auto" and fmt != detected:
        raise WeightsError(f"{path} looks like '{detected}', not '{fmt}' (pass --format auto or {detected})")
    mapping, ignored, unmapped, prefix = map_keys(src, detected)
    seen: Dict[str, str] = {}
    dups = []
    for rec in mapping:
        if rec["target"] in seen:
            dups.append(f"{rec['source']} and {seen[rec['target']]} -> {rec['target']}")
        seen[rec["target"]] = rec["source"]
    _fail(path, _listing("source keys match no chexcam parameter (renamed or foreign?)", unmapped),
          _listing("pairs of source keys map to the same parameter", dups))

    head = next((r for r in mapping if r["target"] == "head.weight"), None)
    if head is None:
        raise WeightsError(f"cannot convert {path}: no classifier weight (classifier.weight / out.weight) found")
    hw = src[head["source"]]
    src_classes = int(hw.shape[0] if head["transform"] == "transpose" else hw.shape[-1])
    if num_classes is not None and num_classes != src_classes:
        raise WeightsError(f"{path} has a {src_classes}-class head ({head['source']} {list(hw.shape)}) but "
                           f"model.num_classes is {num_classes}; set -o model.num_classes={src_classes} "
                           f"and -o data.labels=[...] with {src_classes} names")
    depth = _DEPTH_OF_BLOCKS.get(_blocks_of([r["target"] for r in mapping]))
    if model_name is None:
        if depth is None:
            raise WeightsError(f"cannot convert {path}: dense blocks {_blocks_of([r['target'] for r in mapping])} "
                               "match no DenseNet depth")
        model_name = f"chexnet_densenet{depth}"

    from .models import create_model

    model = create_model(model_name, num_classes=src_classes, output_stride=output_stride)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {r["target"]: r for r in mapping}
    missing = [f"{k} (from e.g. {_expected_source(k, detected, prefix)})" for k in want if k not in got]
    unexpected = [f"{r['source']} (-> {r['target']})" for r in mapping if r["target"] not in want]
    _fail(path, _listing(f"source keys match no {model_name} parameter (renamed or foreign?)", unexpected),
          _listing(f"{model_name} parameters have no source key", missing))

    state: Dict[str, np.ndarray] = {}
    bad = []
    for rec in mapping:
        arr = np.asarray(src[rec["source"]])
        if rec["transform"] == "transpose":
            arr = arr.T
        rec["source_shape"] = list(src[rec["source"]].shape)
        rec["target_shape"] = list(want[rec["target"]])
        if tuple(arr.shape) != want[rec["target"]]:
            bad.append(f"{rec['source']} {rec['source_shape']} -> {rec['target']} expects {rec['target_shape']}")
            continue
        state[rec["target"]] = np.ascontiguousarray(arr, dtype=np.float32)
    _fail(path, _listing("tensors have the wrong shape", bad))
    order = list(want)
    mapping.sort(key=lambda r: order.index(r["target"]))
    report = {
        "source": os.path.abspath(path),
        "source_sha256": sha256_of(path),
        "source_format": detected,
        "stripped_prefix": prefix,
        "model": model_name,
        "num_classes": src_classes,
        "tensors": len(state),
        "parameters": int(sum(v.size for v in state.values())),
        "ignored": ignored,
        "mapping": mapping,
    }
    return {k: state[k] for k in order}, report


def _expected_source(target: str, fmt: str, prefix: str) -> str:
    """A human hint of the source name a chexcam key comes from (for 'missing' messages)."""
    if fmt == "paddle":
        return prefix + target.replace("backbone.", "").replace("head.", "out.0.")
    m = re.match(r"backbone\.db_conv_(\d+)\.conv\d+_(\d+)\.bn_ac_func([12])\.(_conv|_batch_norm)\.(\w+)", target)
    if m:
        b, lyr, i, kind, leaf = m.groups()
        inv = {v: k for k, v in _BN_TORCH.items()}
        part = f"conv.{i}.weight" if kind == "_conv" else f"norm.{i}.{inv.get(leaf, leaf)}"
        if fmt == "torchvision":
            part = part.replace(f".{i}.", f"{i}.")
        return f"{prefix}features.denseblock{int(b) - 1}.denselayer{lyr}.{part}"
    return f"{prefix}features.* / classifier.*"


def convert_file(src: str, out: str, fmt: str = "auto", model_name: Optional[str] = None,
                 num_classes: Optional[int] = None, output_stride: int = 32,
                 report_path: Optional[str] = None) -> Dict[str, Any]:
    """Convert ``src`` to the chexcam checkpoint ``out`` plus a JSON report; returns the report.

    The checkpoint is ``{"model": state, "converted_from": {...}}`` and loads with
    :func:`chexcam.weights.load_weights`. Both files are written atomically and only after every check
    passed: a failed conversion leaves no output file behind.
    """
    import paddle

    from .weights import save_atomic

    if os.path.abspath(src) == os.path.abspath(out):
        raise WeightsError(f"output {out} would overwrite the source checkpoint")
    state, report = convert_state(src, fmt, model_name, num_classes, output_stride)
    meta = {k: report[k] for k in ("source", "source_sha256", "source_format", "model", "num_classes")}
    save_atomic({"model": {k: paddle.to_tensor(v) for k, v in state.items()}, "converted_from": meta}, out)
    report["output"] = os.path.abspath(out)
    report["output_sha256"] = sha256_of(out)
    report_path = report_path or os.path.splitext(out)[0] + ".convert.json"
    with atomic_path(report_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=1)
    report["report"] = os.path.abspath(report_path)
    logger.info("converted %s (%s, %d tensors, %d classes) -> %s; report %s", src, report["source_format"],
                report["tensors"], report["num_classes"], out, report_path)
    return report
