"""Configuration: YAML file -> ``-o a.b=c`` overrides -> strict, typed dataclasses.

PaddleClas-style command lines (``-c file.yaml -o train.epochs=2``) with nanoGPT-style strictness:
an unknown key, a wrong type or a malformed override is a :class:`~chexcam.errors.ConfigError`
whose one-line message names the key, the file and the closest valid key. Override values are parsed
with a safe YAML loader (never ``eval``) that is also strict: a key given twice in one mapping is an error (PyYAML
would keep the last one without a word), and a document whose aliases expand to more than
:data:`MAX_YAML_VALUES` values (a "billion laughs" bomb) is refused before anything is built from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence

import yaml

from .errors import EXIT_ENVIRONMENT, ConfigError
from .labels import CHESTXRAY14_LABELS, IMAGENET_MEAN, IMAGENET_STD, LABEL_PRESETS
from .utils import atomic_path, did_you_mean

#: default ``data.max_pixels``: Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``)
DEFAULT_MAX_PIXELS = 89_478_485
#: largest ``seed``: numpy seeds are 32-bit
MAX_SEED = 2**32 - 1
#: most bootstrap resamples of ``eval.bootstrap`` (10,000 already give a CI's third digit)
MAX_BOOTSTRAP = 100_000
#: most values (scalars, lists, mappings) a YAML document may expand to once its aliases are followed
MAX_YAML_VALUES = 100_000


def _expanded_size(node, memo: Dict[int, int], limit: int) -> int:
    """How many values ``node`` stands for once every alias is expanded (shared nodes counted each time)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias counts once while it is being measured
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_size(child, memo, limit)
        if total > limit:
            break
    memo[key] = total
    return total


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in a mapping and a document expanding to more than
    :data:`MAX_YAML_VALUES` values; both as a ``ConstructorError`` with the line."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}, MAX_YAML_VALUES) > MAX_YAML_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None, f"its aliases expand to more than {MAX_YAML_VALUES:,} values (a YAML bomb?)",
                node.start_mark)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: Dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key}' (first given on line {first[key] + 1})",
                        key_node.start_mark)
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def yaml_load(stream):
    """Parse YAML text or a text stream with :class:`StrictLoader`."""
    return yaml.load(stream, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


@dataclass
class ModelConfig:
    name: str = "chexnet_densenet121"
    num_classes: int = 14
    output_stride: Literal[4, 8, 16, 32] = 32
    weights: Optional[str] = None
    allow_random: bool = False
    dropout: float = 0.0


@dataclass
class DataConfig:
    dataset: str = "chestxray14"
    root: Optional[str] = None
    labels: List[str] = field(default_factory=lambda: list(CHESTXRAY14_LABELS))
    metadata: Optional[str] = None
    split_mode: Literal["official", "chexnet", "random_patient"] = "official"
    split_dir: Optional[str] = None
    view: Literal["all", "PA", "AP", "frontal", "lateral"] = "all"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    csv: Optional[str] = None
    path_column: str = "path"
    resize: int = 256
    crop: int = 224
    hflip: bool = True
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: int = 0
    cache_dir: Optional[str] = None
    on_bad_image: Literal["error", "skip"] = "error"
    resize_mode: Literal["shorter", "square"] = "shorter"
    rot90: bool = False
    color_jitter: float = 0.0
    uncertain: Literal["ones", "zeros", "ignore"] = "ones"  # CheXpert/MIMIC -1.0 labels: U-Ones, U-Zeros, U-Ignore
    blank: Literal["zeros", "ignore"] = "zeros"  # CheXpert/MIMIC blank (not mentioned) labels
    max_pixels: int = DEFAULT_MAX_PIXELS  # images with more pixels (read from the header) are bad images


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    scheduler: Literal["plateau", "none"] = "plateau"
    plateau_factor: float = 0.1
    plateau_patience: int = 1
    early_stop_patience: int = 0
    pos_weight: bool = False
    resume: Optional[str] = None
    auto_resume: bool = True
    amp: bool = False
    log_interval: int = 10
    max_steps_per_epoch: int = 0


@dataclass
class EvalConfig:
    batch_size: int = 32
    split: Literal["val", "test"] = "test"
    ten_crop: bool = False
    bootstrap: int = 1000
    ci: float = 0.95
    threshold: float = 0.5


@dataclass
class CamConfig:
    method: str = "cam"
    layer: Optional[str] = None
    normalize: Literal["none", "minmax", "global"] = "minmax"
    relu: bool = False
    upsample: bool = True
    layers: List[str] = field(default_factory=list)
    fusion: Literal["mean", "layercam"] = "mean"
    aug_smooth: bool = False
    eigen_smooth: bool = False


@dataclass
class ScoreCamConfig:
    batch_size: int = 32


@dataclass
class SSCamConfig:
    batch_size: int = 32
    num_samples: int = 35
    std: float = 2.0
    seed: int = 0


@dataclass
class ISCamConfig:
    batch_size: int = 32
    steps: int = 10


@dataclass
class AblationCamConfig:
    batch_size: int = 32


@dataclass
class SmoothGradCamppConfig:
    num_samples: int = 4
    std: float = 0.3
    seed: int = 0


@dataclass
class FinerCamConfig:
    alpha: float = 1.0
    comparisons: int = 3
    base: Literal["gradcam", "gradcampp", "xgradcam", "hirescam", "gradcam_elementwise", "layercam"] = "gradcam"


@dataclass
class EigenCamConfig:
    center: bool = False


@dataclass
class EigenGradCamConfig:
    center: bool = True


@dataclass
class KpcaCamConfig:
    kernel: Literal["linear", "poly", "rbf", "sigmoid", "cosine"] = "sigmoid"
    gamma: Optional[float] = None


@dataclass
class DffConfig:
    n_components: int = 5
    seed: int = 0
    max_iter: int = 200


@dataclass
class MethodsConfig:
    """The options of the CAM methods that have any (``cam.method``: every tool; ``compare_methods.py``)."""
    scorecam: ScoreCamConfig = field(default_factory=ScoreCamConfig)
    sscam: SSCamConfig = field(default_factory=SSCamConfig)
    iscam: ISCamConfig = field(default_factory=ISCamConfig)
    ablationcam: AblationCamConfig = field(default_factory=AblationCamConfig)
    smoothgradcampp: SmoothGradCamppConfig = field(default_factory=SmoothGradCamppConfig)
    finercam: FinerCamConfig = field(default_factory=FinerCamConfig)
    eigencam: EigenCamConfig = field(default_factory=EigenCamConfig)
    eigengradcam: EigenGradCamConfig = field(default_factory=EigenGradCamConfig)
    kpcacam: KpcaCamConfig = field(default_factory=KpcaCamConfig)
    dff: DffConfig = field(default_factory=DffConfig)


@dataclass
class LimeConfig:
    """``cam.method: lime`` (every tool) and ``tools/compare_methods.py``: chexcam.cam.lime's options."""
    num_samples: int = 1000
    segmentation: Literal["quickshift", "slic"] = "quickshift"
    kernel_size: float = 4.0
    max_dist: float = 200.0
    ratio: float = 0.2
    n_segments: int = 50
    compactness: float = 10.0
    hide_color: Literal["mean", "segment"] = "mean"
    kernel_width: float = 0.25
    alpha: float = 1.0
    batch_size: int = 50
    seed: int = 0
    top: int = 5


@dataclass
class InferConfig:
    input: Optional[str] = None
    batch_size: int = 8
    threshold: float = 0.5
    sort: bool = False
    colormap: Literal["jet", "turbo", "inferno", "magma", "viridis", "hot", "plasma", "bone"] = "jet"
    alpha: float = 0.4
    save_npz: bool = False
    ten_crop: bool = False
    engine: Literal["auto", "dynamic", "predictor"] = "auto"
    subdir: str = "cam"
    tile: int = 256
    colorbar: bool = True
    draw_boxes: Literal["none", "positive", "all"] = "positive"
    mosaic: bool = True
    png_compression: int = 1
    workers: int = 0


@dataclass
class LocalizationConfig:
    boxes: Literal["regions", "peaks"] = "regions"
    threshold: float = 0.5
    max_boxes: int = 3
    peak_size: float = 0.1875
    min_distance: float = 0.1
    threshold_rel: float = 0.5
    bbox_csv: Optional[str] = None
    images: Optional[str] = None
    train_list: Optional[str] = None


@dataclass
class ExportConfig:
    dir: Optional[str] = None
    onnx: bool = False
    onnx_opset: int = 13
    cpu_threads: int = 0
    mkldnn: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    tensorrt: bool = False


@dataclass
class Config:
    output_dir: str = "output"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    localization: LocalizationConfig = field(default_factory=LocalizationConfig)
    lime: LimeConfig = field(default_factory=LimeConfig)
    methods: MethodsConfig = field(default_factory=MethodsConfig)
    #: where the config was loaded from (not a key; set by load_config)
    source: Optional[str] = field(default=None, metadata={"internal": True})


# ---------------------------------------------------------------------------------------------
# schema walking


def _is_section(tp) -> bool:
    return dataclasses.is_dataclass(tp)


def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _public_fields(cls):
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def valid_keys(cls=Config, prefix: str = "") -> List[str]:
    """All dotted keys of the schema, sections included (``train``, ``train.epochs``, ...)."""
    hints = _hints(cls)
    out = []
    for f in _public_fields(cls):
        key = prefix + f.name
        out.append(key)
        if _is_section(hints[f.name]):
            out.extend(valid_keys(hints[f.name], key + "."))
    return out


def _closest(key: str) -> str:
    return did_you_mean(key, valid_keys(), cutoff=0.5)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0]) + " or null"
    if origin in (list, List):
        return "a list of " + _type_name(typing.get_args(tp)[0])
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


_BAD = object()


def _coerce(value, tp, from_cli: bool, raw: Optional[str]):
    """Return ``value`` checked against ``tp`` (with the few safe coercions), or ``_BAD``."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], from_cli, raw)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        if from_cli and raw is not None and raw in choices:
            return raw
        return _BAD
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            return _BAD
        (inner,) = typing.get_args(tp)
        out = [_coerce(v, inner, False, None) for v in value]
        return _BAD if any(v is _BAD for v in out) else out
    if tp is bool:
        return value if isinstance(value, bool) else _BAD
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if tp is float:
        if isinstance(value, bool):
            return _BAD
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept any plain decimal number
            try:
                return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "+inf") else _BAD
            except ValueError:
                return _BAD
        try:
            return float(value) if isinstance(value, (int, float)) else _BAD
        except OverflowError:  # an integer beyond any float
            return _BAD
    if tp is str:
        if isinstance(value, str):
            return value
        # "-o data.root=2024" parses as an int; a str key takes the text as written
        if from_cli and raw is not None:
            return raw
        return _BAD
    return value


def _origin(origins: Dict[str, str], dotted: str, where: str) -> str:
    """Where a key came from: the file, or the file plus the ``-o`` override that set it (or a child)."""
    if dotted in origins:
        return origins[dotted]
    for key, value in origins.items():
        if key.startswith(dotted + ".") and not key.endswith("#raw"):
            return value
    return where


def _build(cls, data: Dict[str, Any], where: str, prefix: str, origins: Dict[str, str]):
    hints = _hints(cls)
    names = {f.name for f in _public_fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = prefix + str(key)
        if key not in names:
            raise ConfigError(f"unknown key '{dotted}' in {_origin(origins, dotted, where)}{_closest(dotted)}")
        tp = hints[key]
        if _is_section(tp):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(
                    f"key '{dotted}' in {_origin(origins, dotted, where)} must be a section (a mapping), "
                    f"got {value!r}"
                )
            kwargs[key] = _build(tp, value, where, dotted + ".", origins)
        else:
            if dotted == "data.labels" and isinstance(value, str):
                value = _label_preset(value, _origin(origins, dotted, where))
            raw = origins.get(dotted + "#raw")
            coerced = _coerce(value, tp, raw is not None, raw)
            if coerced is _BAD:
                raise ConfigError(
                    f"key '{dotted}' in {_origin(origins, dotted, where)} must be {_type_name(tp)}, "
                    f"got {value!r}"
                )
            kwargs[key] = coerced
    return cls(**kwargs)


def _label_preset(name: str, where: str) -> List[str]:
    """``data.labels: chexpert_competition`` -> the preset's list (see ``chexcam.labels.LABEL_PRESETS``)."""
    if name not in LABEL_PRESETS:
        raise ConfigError(f"key 'data.labels' in {where} must be a list of names or a preset "
                          f"({', '.join(LABEL_PRESETS)}), got {name!r}{did_you_mean(name, LABEL_PRESETS)}")
    return list(LABEL_PRESETS[name])


def parse_override(text: str, where: str = "-o"):
    """Split ``"a.b=c"`` into ``(["a", "b"], value, raw)``; the value goes through ``yaml.safe_load``."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"malformed override {text!r} ({where}): expected KEY=VALUE, e.g. train.epochs=2")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"malformed override {text!r} ({where}): empty key; expected KEY=VALUE")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: e.g. a date 2024-13-01
        problem = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"malformed value in override {text!r} ({where}): {problem}") from None
    return key.split("."), value, raw


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config, apply ``"a.b=c"`` overrides and validate everything against the schema.

    Args:
        path: YAML file; ``None`` starts from the built-in defaults.
        overrides: strings like the CLI's ``-o`` values, applied in order.

    Raises:
        ConfigError: unknown key, wrong type, malformed override or unreadable file (one line).
    """
    where = str(path) if path else "the defaults"
    data: Dict[str, Any] = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as fh:
                loaded = yaml_load(fh)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"cannot read config file {path}: not UTF-8 text (byte {exc.start})",
                              exit_code=EXIT_ENVIRONMENT) from None
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or exc
            raise ConfigError(f"cannot parse {path}{at}: {problem}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}",
                              exit_code=EXIT_ENVIRONMENT) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must contain a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    origins: Dict[str, str] = {}
    if isinstance(overrides, str):
        overrides = [overrides]
    for text in overrides:
        parts, value, raw = parse_override(text)
        dotted = ".".join(parts)
        node = data
        for i, part in enumerate(parts[:-1]):
            sub = node.get(part)
            if sub is None:
                sub = node[part] = {}
            if not isinstance(sub, dict):
                prefix = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"override {text!r}: '{prefix}' in {where} is a value, not a section{_closest(dotted)}"
                )
            node = sub
        node[parts[-1]] = value
        origins[dotted] = f"{where} (from -o {text})"
        origins[dotted + "#raw"] = raw.strip()
    cfg = _build(Config, data, where, "", origins)
    cfg.source = str(path) if path else None
    validate(cfg, where)
    return cfg


def _check_finite(node, where: str, prefix: str = "") -> None:
    """Every float of the config (lists of floats too) is finite: NaN passes every ``<``/``>`` check."""
    for f in _public_fields(type(node)):
        value, key = getattr(node, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            _check_finite(value, where, key + ".")
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"key '{key}' in {where} must be a finite number, got {value!r}")


def validate(cfg: Config, where: str = "config") -> None:
    """Cross-field checks the type system cannot express."""
    _check_finite(cfg, where)
    labels = [str(lab) for lab in cfg.data.labels]
    twice = sorted({lab for lab in labels if labels.count(lab) > 1})
    if twice or any(not lab.strip() for lab in labels):
        what = f"names {', '.join(map(repr, twice))} more than once" if twice else "an empty name"
        raise ConfigError(f"key 'data.labels' in {where} has {what}; each class needs its own name")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"key 'seed' in {where} must be in [0, {MAX_SEED}], got {cfg.seed}")
    for key, value, ok, want in (
        ("data.max_pixels", cfg.data.max_pixels, cfg.data.max_pixels >= 1, ">= 1 (pixels per image)"),
        ("data.crop", cfg.data.crop, cfg.data.crop >= 1, ">= 1"),
        ("model.dropout", cfg.model.dropout, 0.0 <= cfg.model.dropout < 1.0, "in [0, 1)"),
        ("train.weight_decay", cfg.train.weight_decay, cfg.train.weight_decay >= 0.0, ">= 0"),
        ("train.beta1", cfg.train.beta1, 0.0 <= cfg.train.beta1 < 1.0, "in [0, 1)"),
        ("train.beta2", cfg.train.beta2, 0.0 <= cfg.train.beta2 < 1.0, "in [0, 1)"),
        ("eval.threshold", cfg.eval.threshold, 0.0 <= cfg.eval.threshold <= 1.0, "in [0, 1]"),
        ("export.onnx_opset", cfg.export.onnx_opset, cfg.export.onnx_opset >= 7, ">= 7"),
    ):
        if not ok:
            raise ConfigError(f"key '{key}' in {where} must be {want}, got {value!r}")
    if cfg.model.num_classes < 1:
        raise ConfigError(f"key 'model.num_classes' in {where} must be >= 1, got {cfg.model.num_classes}")
    if len(cfg.data.labels) != cfg.model.num_classes:
        raise ConfigError(
            f"key 'data.labels' in {where} has {len(cfg.data.labels)} names but model.num_classes is "
            f"{cfg.model.num_classes}; they must match"
        )
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3:
        raise ConfigError(f"keys 'data.mean' and 'data.std' in {where} must each list 3 numbers (RGB)")
    if any(s <= 0 for s in cfg.data.std):
        raise ConfigError(f"key 'data.std' in {where} must be positive, got {cfg.data.std}")
    if cfg.data.crop > cfg.data.resize:
        raise ConfigError(
            f"key 'data.crop' in {where} ({cfg.data.crop}) must not exceed data.resize ({cfg.data.resize})"
        )
    for key, val in (("train.epochs", cfg.train.epochs), ("train.batch_size", cfg.train.batch_size),
                     ("eval.batch_size", cfg.eval.batch_size), ("infer.batch_size", cfg.infer.batch_size),
                     ("train.log_interval", cfg.train.log_interval)):
        if val < 1:
            raise ConfigError(f"key '{key}' in {where} must be >= 1, got {val}")
    if not 0.0 < cfg.eval.ci < 1.0:
        raise ConfigError(f"key 'eval.ci' in {where} must be between 0 and 1, got {cfg.eval.ci}")
    if not 0.0 < cfg.data.val_fraction < 1.0 or not 0.0 <= cfg.data.test_fraction < 1.0 \
            or cfg.data.val_fraction + cfg.data.test_fraction >= 1.0:
        raise ConfigError(
            f"keys 'data.val_fraction' ({cfg.data.val_fraction}) and 'data.test_fraction' "
            f"({cfg.data.test_fraction}) in {where} must be in (0, 1) and [0, 1) and sum to less than 1"
        )
    for key, val in (("data.num_workers", cfg.data.num_workers), ("train.early_stop_patience",
                     cfg.train.early_stop_patience), ("train.max_steps_per_epoch", cfg.train.max_steps_per_epoch),
                     ("eval.bootstrap", cfg.eval.bootstrap), ("train.plateau_patience", cfg.train.plateau_patience),
                     ("export.cpu_threads", cfg.export.cpu_threads)):
        if val < 0:
            raise ConfigError(f"key '{key}' in {where} must be >= 0, got {val}")
    if cfg.data.resize ** 2 > DEFAULT_MAX_PIXELS:  # the shorter side: every resized image is at least resize^2
        raise ConfigError(f"key 'data.resize' in {where} must be at most {math.isqrt(DEFAULT_MAX_PIXELS):,} (a resized "
                          f"image has at least resize^2 pixels, at most {DEFAULT_MAX_PIXELS:,}), got {cfg.data.resize:,}")
    if cfg.eval.bootstrap > MAX_BOOTSTRAP:
        raise ConfigError(f"key 'eval.bootstrap' in {where} must be <= {MAX_BOOTSTRAP:,}, got {cfg.eval.bootstrap:,}")
    lime = cfg.lime
    for key, value, ok, want in (
        ("lime.num_samples", lime.num_samples, lime.num_samples >= 1, ">= 1"),
        ("lime.batch_size", lime.batch_size, lime.batch_size >= 1, ">= 1"),
        ("lime.n_segments", lime.n_segments, lime.n_segments >= 1, ">= 1"),
        ("lime.kernel_size", lime.kernel_size, lime.kernel_size > 0, "> 0"),
        ("lime.max_dist", lime.max_dist, lime.max_dist > 0, "> 0"),
        ("lime.ratio", lime.ratio, 0.0 <= lime.ratio <= 1.0, "in [0, 1]"),
        ("lime.compactness", lime.compactness, lime.compactness > 0, "> 0"),
        ("lime.kernel_width", lime.kernel_width, lime.kernel_width > 0, "> 0"),
        ("lime.alpha", lime.alpha, lime.alpha >= 0, ">= 0"),
        ("lime.seed", lime.seed, 0 <= lime.seed <= MAX_SEED, f"in [0, {MAX_SEED}]"),
        ("lime.top", lime.top, lime.top >= 0, ">= 0 (superpixels outlined per class; 0: none)"),
    ):
        if not ok:
            raise ConfigError(f"key '{key}' in {where} must be {want}, got {value!r}")
    mt = cfg.methods
    for key, value, lo, hi in (
        ("methods.scorecam.batch_size", mt.scorecam.batch_size, 1, 4096),
        ("methods.sscam.batch_size", mt.sscam.batch_size, 1, 4096),
        ("methods.sscam.num_samples", mt.sscam.num_samples, 1, 10_000),
        ("methods.sscam.std", mt.sscam.std, 0.0, 1e6),
        ("methods.sscam.seed", mt.sscam.seed, 0, MAX_SEED),
        ("methods.iscam.batch_size", mt.iscam.batch_size, 1, 4096),
        ("methods.iscam.steps", mt.iscam.steps, 1, 10_000),
        ("methods.ablationcam.batch_size", mt.ablationcam.batch_size, 1, 4096),
        ("methods.smoothgradcampp.num_samples", mt.smoothgradcampp.num_samples, 1, 10_000),
        ("methods.smoothgradcampp.std", mt.smoothgradcampp.std, 0.0, 1e6),
        ("methods.smoothgradcampp.seed", mt.smoothgradcampp.seed, 0, MAX_SEED),
        ("methods.finercam.comparisons", mt.finercam.comparisons, 1, 10_000),
        ("methods.dff.n_components", mt.dff.n_components, 1, 4096),
        ("methods.dff.seed", mt.dff.seed, 0, MAX_SEED),
        ("methods.dff.max_iter", mt.dff.max_iter, 1, 100_000),
    ):
        if not lo <= value <= hi:
            raise ConfigError(f"key '{key}' in {where} must be in [{lo}, {hi}], got {value!r}")
    if cfg.cam.layers and cfg.cam.layer:
        raise ConfigError(f"cam.layer and cam.layers are both set in {where}: cam.layers (maps fused across layers) "
                          "replaces cam.layer; set one of them")
    if cfg.cam.method == "lime" and (cfg.cam.layers or cfg.cam.aug_smooth or cfg.cam.eigen_smooth):
        raise ConfigError(f"cam.method=lime in {where} perturbs the input and explains no layer: cam.layers, "
                          "cam.aug_smooth and cam.eigen_smooth do not apply")
    if cfg.cam.method == "lime" and cfg.infer.ten_crop:
        raise ConfigError(f"cam.method=lime with infer.ten_crop=true in {where}: LIME explains one view of an "
                          "image (ten crops would cost ten times its num_samples forward passes); set "
                          "infer.ten_crop=false")
    i, loc = cfg.infer, cfg.localization
    for key, value, ok, want in (
        ("infer.alpha", i.alpha, 0.0 <= i.alpha <= 1.0, "in [0, 1]"),
        ("infer.threshold", i.threshold, 0.0 <= i.threshold <= 1.0, "in [0, 1]"),
        ("infer.tile", i.tile, 32 <= i.tile <= 4096, "in 32..4096 (a mosaic holds one tile per class and more)"),
        ("infer.png_compression", i.png_compression, 0 <= i.png_compression <= 9, "in 0..9 (zlib level)"),
        ("infer.workers", i.workers, i.workers >= 0, ">= 0 (0: one per CPU)"),
        ("localization.threshold", loc.threshold, 0.0 < loc.threshold <= 1.0, "in (0, 1]"),
        ("localization.max_boxes", loc.max_boxes, loc.max_boxes >= 0, ">= 0"),
        ("localization.peak_size", loc.peak_size, 0.0 < loc.peak_size <= 1.0, "in (0, 1]"),
        ("localization.min_distance", loc.min_distance, 0.0 <= loc.min_distance <= 1.0, "in [0, 1]"),
        ("localization.threshold_rel", loc.threshold_rel, 0.0 <= loc.threshold_rel <= 1.0, "in [0, 1]"),
    ):
        if not ok:
            raise ConfigError(f"key '{key}' in {where} must be {want}, got {value!r}")
    if not 0.0 <= cfg.data.color_jitter < 1.0:
        raise ConfigError(f"key 'data.color_jitter' in {where} must be in [0, 1), got {cfg.data.color_jitter}")
    if cfg.data.dataset == "chestxray14" and cfg.data.view in ("frontal", "lateral"):
        raise ConfigError(f"key 'data.view' in {where} is '{cfg.data.view}' but ChestX-ray14 has frontal "
                          f"images only: use all, PA or AP")
    if cfg.data.dataset in ("chexpert", "mimic_cxr") and cfg.data.split_mode == "chexnet":
        raise ConfigError(f"key 'data.split_mode' in {where} is 'chexnet' (ChestX-ray14's lists); "
                          f"{cfg.data.dataset} takes official or random_patient")
    if not cfg.train.lr > 0 or not 0.0 < cfg.train.plateau_factor < 1.0:
        raise ConfigError(f"keys 'train.lr' ({cfg.train.lr}) and 'train.plateau_factor' "
                          f"({cfg.train.plateau_factor}) in {where} must be > 0 and in (0, 1)")


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    """Plain-dict form of a config (for YAML files and checkpoints)."""
    out = dataclasses.asdict(cfg)
    out.pop("source", None)
    return out


def config_from_dict(data: Dict[str, Any], where: str = "a checkpoint") -> Config:
    """Rebuild a validated config from :func:`config_to_dict` output."""
    cfg = _build(Config, dict(data), where, "", {})
    validate(cfg, where)
    return cfg


def save_config(cfg: Config, path: str) -> str:
    """Write the resolved config as YAML (next to every output); returns the path."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(f"# resolved chexcam config (from {cfg.source or 'defaults'})\n")
        yaml.safe_dump(config_to_dict(cfg), fh, sort_keys=False)
    return path
