"""Training: CheXNet's recipe, resumable after ``kill -9``, data-parallel under ``paddle.distributed.launch``.

Recipe (Rajpurkar et al. 2017): ``BCEWithLogitsLoss`` (optional per-class positive weights
negatives/positives from the training split), Adam (lr 1e-3, betas 0.9/0.999), learning rate x0.1 when
the validation loss has not improved for one epoch. After every epoch: validation loss and AUROC per
class and mean, ``last.pdparams`` and (when the mean AUROC improved) ``best.pdparams``, each written
atomically with the resolved config, epoch, optimizer and scheduler state, the history and the
early-stopping counter, and one JSON line in ``history.jsonl``.

Determinism: shuffling and augmentation are seeded from ``(seed, epoch, index)`` and paddle's global
generator is re-seeded from ``(seed, epoch)`` at every epoch, so a run resumed from the checkpoint of
epoch ``e`` replays epoch ``e + 1`` exactly as an uninterrupted run would (CPU; tested).

Multi-process: every rank trains on its shard of each epoch (gradients all-reduced by
``paddle.DataParallel``), BatchNorm running statistics are averaged across ranks after each epoch and
every rank evaluates the whole validation split, so all ranks keep identical weights, scheduler and
early-stopping state. Only rank 0 logs at INFO level and writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import paddle

from ..config import Config, config_to_dict, save_config
from ..data.datasets import ImageDataset, build_split, build_splits, iterate, make_loader, one_line
from ..errors import ChexcamError
from ..losses import build_loss, pos_weight_from_targets
from ..metrics.classification import bce_loss, mean_auroc, per_class_auroc
from ..models import build_model
from ..utils import atomic_path, remove_stale_temps, seed_everything, set_device
from ..weights import check_fits, checkpoint_config, read_checkpoint, save_atomic, state_dict_of, weights_fingerprint
from .evaluate import predict

logger = logging.getLogger(__name__)

LAST, BEST, HISTORY, SUMMARY = "last.pdparams", "best.pdparams", "history.jsonl", "train_summary.json"


class TrainingDiverged(ChexcamError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept."""


#: config keys a checkpoint must share with the config that resumes it (they shape the model or its outputs)
RESUME_KEYS = ("model.name", "model.num_classes", "model.output_stride", "data.labels")


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _dist_info():
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    return rank, world


def _average_buffers(model: paddle.nn.Layer, world: int) -> None:
    """Average the non-trained float tensors (BatchNorm running statistics) over ranks.

    Each rank normalizes its own shard, so the running statistics drift apart; paddle.vision's
    ``BatchNorm`` keeps them as non-trainable parameters, which ``DataParallel`` does not all-reduce.
    """
    import paddle.distributed as dist

    trained = {id(p) for p in model.parameters() if not p.stop_gradient}
    for t in model.state_dict().values():
        if id(t) not in trained and t.dtype in (paddle.float32, paddle.float64):
            dist.all_reduce(t)
            t.set_value(t / world)


def _gather_digests(digest: str, world: int) -> List[str]:
    import paddle.distributed as dist

    mine = paddle.to_tensor(np.frombuffer(bytes.fromhex(digest), dtype=np.int32).copy())
    out: List[paddle.Tensor] = []
    dist.all_gather(out, mine)
    return [np.asarray(t.numpy(), dtype=np.int32).tobytes().hex() for t in out]


def _pos_weight(samples) -> np.ndarray:
    """Negatives / positives per class over the observed labels (ignored, NaN, labels left out)."""
    return pos_weight_from_targets(np.stack([s.target for s in samples]))


def _first_non_finite(model: paddle.nn.Layer) -> Optional[str]:
    """The name of the first parameter or buffer holding a NaN or an infinity, or None."""
    for name, t in model.state_dict().items():
        if paddle.is_floating_point(t) and not bool(paddle.isfinite(t).all()):
            return name
    return None


def _rename_opt_state(state: Dict[str, Any], saved: Dict[str, str], model: paddle.nn.Layer) -> Dict[str, Any]:
    """Optimizer state keys carry paddle's global parameter names (``conv2d_12.w_0_moment1_0``), which
    depend on how many layers the process built before; map them through the structured names."""
    now = {k: p.name for k, p in model.named_parameters()}
    mapping = {saved[k]: now[k] for k in now if k in saved and saved[k] != now[k]}
    if not mapping:
        return state
    olds = sorted(mapping, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        for old in olds:
            if key.startswith(old + "_"):
                key = mapping[old] + key[len(old):]
                break
        out[key] = value
    return out


def _resume_path(cfg: Config) -> Optional[str]:
    if cfg.train.resume:
        if not os.path.isfile(cfg.train.resume):
            raise ChexcamError(f"train.resume checkpoint not found: {cfg.train.resume}")
        return cfg.train.resume
    last = os.path.join(cfg.output_dir, LAST)
    if cfg.train.auto_resume and os.path.isfile(last):
        return last
    return None


def _write_history(path: str, history: List[Dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(type(obj).__name__)


def run(cfg: Config) -> Dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns a summary (``output_dir``, ``best``, ``history``...)."""
    rank, world = _dist_info()
    chex_logger = logging.getLogger("chexcam")
    if rank != 0:
        chex_logger.setLevel(logging.WARNING)
    device = set_device(cfg.device)
    if world > 1:
        import paddle.distributed as dist

        dist.init_parallel_env()
    use_amp = bool(cfg.train.amp and device == "gpu")
    if cfg.train.amp and not use_amp:
        logger.info("train.amp=true ignored: mixed precision needs a GPU (running on %s)", device)
    seed_everything(cfg.seed)
    out = cfg.output_dir
    handler = None
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        remove_stale_temps(out)
        handler = logging.FileHandler(os.path.join(out, "train.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        chex_logger.addHandler(handler)
    try:
        return _run(cfg, rank, world, use_amp)
    finally:
        if handler is not None:
            chex_logger.removeHandler(handler)
            handler.close()


@dataclass
class _Parts:
    """What one training run is made of (built once by :func:`_build`)."""

    model: paddle.nn.Layer
    net: paddle.nn.Layer  # the model, wrapped by DataParallel when world > 1
    loss_fn: Any
    opt: Any
    sched: Any
    scaler: Any
    train_ds: ImageDataset
    val_ds: ImageDataset
    info: Dict[str, Any]


@dataclass
class _Progress:
    """What a checkpoint stores besides the weights and a resume restores."""

    start_epoch: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    best: Dict[str, Any] = field(default_factory=lambda: {"epoch": None, "metric": None})
    bad_epochs: int = 0
    skipped: Dict[str, str] = field(default_factory=dict)


def _run(cfg: Config, rank: int, world: int, use_amp: bool) -> Dict[str, Any]:
    """Build, resume, then per epoch: train, validate, save; finally the summary."""
    t_start = time.time()
    parts = _build(cfg, world, use_amp)
    state = _resume(cfg, parts)
    if rank == 0:  # only now: a config that cannot resume this folder's checkpoint leaves its config.yaml alone
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
        _write_history(os.path.join(cfg.output_dir, HISTORY), state.history)
    loader, sampler = make_loader(parts.train_ds, cfg.train.batch_size, True, cfg.seed, cfg.data.num_workers,
                                  rank, world, cfg.train.max_steps_per_epoch)
    logger.info("training %s on %d images (%d val) for %d epochs, %d steps/epoch x %d rank(s), batch %d",
                cfg.model.name, len(parts.train_ds), len(parts.val_ds), cfg.train.epochs, len(sampler), world,
                cfg.train.batch_size)
    clock = _Clock(total_steps=max(1, (cfg.train.epochs - state.start_epoch) * len(sampler)))
    stopped_early = False
    for epoch in range(state.start_epoch, cfg.train.epochs):
        losses, seen, train_time = _train_one_epoch(cfg, parts, loader, sampler, epoch, state.skipped, world,
                                                    use_amp, clock)
        bad = _first_non_finite(parts.model)  # before validation and any checkpoint: a NaN model is never kept
        if bad is not None:
            _diverged(cfg, epoch, None, bad)
        improved = _validate(cfg, parts, state, epoch, losses, seen * world, train_time)
        if rank == 0:
            _save(cfg, parts, state, epoch, improved)
        if cfg.train.early_stop_patience and state.bad_epochs >= cfg.train.early_stop_patience:
            logger.info("early stopping: no val improvement for %d epoch(s)", state.bad_epochs)
            stopped_early = True
            break
    return _finish(cfg, parts, state, rank, world, stopped_early, time.time() - t_start)


def _build(cfg: Config, world: int, use_amp: bool) -> _Parts:
    """Splits, datasets, model, loss, optimizer, scheduler and AMP scaler."""
    info = build_splits(cfg).info
    train_samples, val_samples = build_split(cfg, "train"), build_split(cfg, "val")
    if not val_samples:
        raise ChexcamError(f"dataset '{cfg.data.dataset}' has an empty val split; training needs one")
    model = build_model(cfg)
    model.train()
    pos_weight = None
    if cfg.train.pos_weight:
        pw = _pos_weight(train_samples)
        pos_weight = paddle.to_tensor(pw)
        logger.info("positive weights: %s", ", ".join(f"{lab} {w:.2f}" for lab, w in zip(cfg.data.labels, pw)))
    sched = None
    if cfg.train.scheduler == "plateau":
        sched = paddle.optimizer.lr.ReduceOnPlateau(cfg.train.lr, mode="min", factor=cfg.train.plateau_factor,
                                                    patience=cfg.train.plateau_patience)
    opt = paddle.optimizer.Adam(learning_rate=sched if sched is not None else cfg.train.lr,
                                beta1=cfg.train.beta1, beta2=cfg.train.beta2, parameters=model.parameters(),
                                weight_decay=cfg.train.weight_decay or None)
    return _Parts(model=model, net=paddle.DataParallel(model) if world > 1 else model,
                  loss_fn=build_loss(cfg, pos_weight=pos_weight), opt=opt, sched=sched,
                  scaler=paddle.amp.GradScaler() if use_amp else None,
                  train_ds=ImageDataset(train_samples, cfg, train=True),
                  val_ds=ImageDataset(val_samples, cfg, train=False), info=info)


def _resume(cfg: Config, parts: _Parts) -> _Progress:
    """Weights, optimizer, scheduler and progress from ``train.resume`` or ``output_dir/last.pdparams``."""
    path = _resume_path(cfg)
    if not path:
        return _Progress()
    ckpt = read_checkpoint(path)
    _check_fields(ckpt, path)
    _check_resumable(cfg, parts.model, ckpt, path)
    done = int(ckpt.get("epoch", -1)) + 1
    if done >= cfg.train.epochs:  # a finished run: nothing to train, and a silent exit 0 would look like training
        raise ChexcamError(f"nothing to train: {path} has finished {done} epoch(s) and train.epochs={cfg.train.epochs}; "
                           f"raise train.epochs to continue it, or start afresh with -o output_dir=NEW_FOLDER (or "
                           "-o train.auto_resume=false to overwrite this one)")
    parts.model.set_state_dict(state_dict_of(ckpt))
    bad = _first_non_finite(parts.model)
    if bad is not None:
        raise TrainingDiverged(f"cannot resume from {path}: its weights are not finite ({bad}); resume from an "
                               f"earlier checkpoint with -o train.resume=PATH or start over in another output_dir")
    try:  # paddle checks little of a state dict: a wrong one fails deep inside with a TypeError or RuntimeError
        if "optimizer" in ckpt:
            parts.opt.set_state_dict(_rename_opt_state(ckpt["optimizer"], ckpt.get("param_names", {}), parts.model))
        if parts.sched is not None and ckpt.get("scheduler"):
            parts.sched.set_state_dict(ckpt["scheduler"])
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, AssertionError) as exc:
        raise ChexcamError(f"cannot resume from {path}: its optimizer or scheduler state does not fit this run "
                           f"({one_line(exc)[:200]}); start afresh in another output_dir") from None
    state = _Progress(start_epoch=done, history=list(ckpt.get("history", [])),
                      best=dict(ckpt.get("best", _Progress().best)), bad_epochs=int(ckpt.get("bad_epochs", 0)),
                      skipped=dict(ckpt.get("skipped", {})))
    logger.info("resumed from %s: %d epoch(s) done, continuing at epoch %d", path, state.start_epoch,
                state.start_epoch + 1)
    return state


#: the progress fields of a checkpoint and the types a resume needs them to have
_FIELDS = {"epoch": int, "history": list, "best": dict, "bad_epochs": int, "skipped": dict, "config": dict,
           "optimizer": dict, "scheduler": dict, "param_names": dict}


def _check_fields(ckpt: Dict[str, Any], path: str) -> None:
    """One line naming the first progress field of ``ckpt`` that has the wrong type or value (an ``epoch`` of
    ``"x"`` or ``-5``, a ``config`` that is a list), before anything is restored from it."""
    for key, kind in _FIELDS.items():
        value = ckpt.get(key)
        if value is None:
            continue
        if kind is int:
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0
        else:
            ok = isinstance(value, kind)
        if not ok:
            want = {int: "a whole number >= 0", list: "a list", dict: "a mapping"}[kind]
            raise ChexcamError(f"cannot resume from {path}: its '{key}' must be {want}, got {_brief(value)}; "
                               "resume from another checkpoint with -o train.resume=PATH or start afresh in another "
                               "output_dir")
    if any(not isinstance(row, dict) for row in ckpt.get("history") or []):
        raise ChexcamError(f"cannot resume from {path}: its 'history' must be a list of mappings")


def _brief(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _check_resumable(cfg: Config, model: paddle.nn.Layer, ckpt: Dict[str, Any], path: str) -> None:
    """A checkpoint resumes only a config that builds the same model; else one line naming the key that differs."""
    saved, now = checkpoint_config(ckpt), config_to_dict(cfg)
    how = ("drop train.resume" if cfg.train.resume else
           f"train into another output_dir (or -o train.auto_resume=false to start over in {cfg.output_dir})")
    for key in RESUME_KEYS if saved is not None else ():
        section, name = key.split(".")
        old = saved[section].get(name) if isinstance(saved.get(section), dict) else None
        new = now[section][name]
        if old is not None and old != new:
            raise ChexcamError(f"cannot resume from {path}: it was trained with {key}={old!r} but the config has "
                               f"{key}={new!r}; use the same {key} or {how}")
    check_fits(model, state_dict_of(ckpt), path)


@dataclass
class _Clock:
    """Steps and time of the run so far, for the images/s and ETA of the log lines."""

    total_steps: int
    t0: float = field(default_factory=time.time)
    steps: int = 0


def _train_one_epoch(cfg: Config, parts: _Parts, loader, sampler, epoch: int, skipped: Dict[str, str], world: int,
                     use_amp: bool, clock: _Clock):
    """One pass over this rank's shard; returns the step losses, the images seen and the seconds taken."""
    paddle.seed(cfg.seed * 1000 + epoch)
    model, net, opt, scaler = parts.model, parts.net, parts.opt, parts.scaler
    model.train()
    t0 = last_t = time.time()
    seen = seen_since = 0
    losses: List[float] = []
    steps = len(sampler)
    batches = iterate(loader, sampler, parts.train_ds, epoch, cfg.data.on_bad_image, skipped, yield_empty=world > 1)
    for it, (x, y, idx) in enumerate(batches, 1):
        # all images of this rank's batch were bad: join the all-reduce with a zero-weighted loss
        weight = 0.0 if len(idx) == 0 else 1.0
        if use_amp:
            with paddle.amp.auto_cast():
                logits = net(x)
            loss = parts.loss_fn(logits.astype("float32"), y) * weight
            scaler.scale(loss).backward()
        else:
            loss = parts.loss_fn(net(x), y) * weight
            loss.backward()
        value = float(loss)
        if not math.isfinite(value):  # before the step: the weights of the last good epoch stay intact
            _diverged(cfg, epoch, it, value)
        if use_amp:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.clear_grad()
        losses.append(value)
        seen += len(idx)
        seen_since += len(idx)
        clock.steps += 1
        if it % cfg.train.log_interval == 0 or it == steps:
            now = time.time()
            ips = seen_since * world / max(now - last_t, 1e-9)
            eta = (now - clock.t0) / clock.steps * (clock.total_steps - clock.steps)
            logger.info("epoch %d/%d iter %d/%d loss %.4f lr %.2e ips %.1f img/s eta %s",
                        epoch + 1, cfg.train.epochs, it, steps, float(np.mean(losses[-cfg.train.log_interval:])),
                        opt.get_lr(), ips, _fmt_time(eta))
            last_t, seen_since = now, 0
    if world > 1:
        _average_buffers(model, world)
    return losses, seen, time.time() - t0


def _validate(cfg: Config, parts: _Parts, state: _Progress, epoch: int, losses: List[float], images: int,
              train_time: float) -> bool:
    """Validation loss and AUROC, scheduler step, best/early-stop bookkeeping, a history row; improved?"""
    res = predict(parts.model, parts.val_ds, cfg.eval.batch_size, cfg.data.num_workers, cfg.data.on_bad_image,
                  state.skipped)
    val_loss = bce_loss(res["targets"], res["logits"])
    aurocs = per_class_auroc(res["targets"], res["probs"])
    mean = mean_auroc(aurocs)
    lr_used = parts.opt.get_lr()
    if parts.sched is not None:
        parts.sched.step(val_loss)
    metric = mean if mean is not None else -val_loss
    improved = state.best["metric"] is None or metric > state.best["metric"]
    if improved:
        state.best = {"epoch": epoch + 1, "metric": metric}
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1
    row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
           "val_loss": val_loss, "val_mean_auroc": mean,
           "val_auroc": {lab: a for lab, a in zip(cfg.data.labels, aurocs)}, "lr": lr_used,
           "train_images": images, "train_seconds": round(train_time, 3), "skipped": len(state.skipped)}
    state.history.append(row)
    logger.info("epoch %d/%d done: train loss %.4f, val loss %.4f, val mean AUROC %s%s (%.1f s)",
                epoch + 1, cfg.train.epochs, row["train_loss"] or float("nan"), val_loss,
                "n/a" if mean is None else f"{mean:.4f}", " (best)" if improved else "", train_time)
    return improved


def _save(cfg: Config, parts: _Parts, state: _Progress, epoch: int, improved: bool) -> None:
    """``last`` (and ``best`` when improved) checkpoints, atomically, and the history file."""
    out = cfg.output_dir
    ckpt = {"model": parts.model.state_dict(), "optimizer": parts.opt.state_dict(),
            "scheduler": parts.sched.state_dict() if parts.sched is not None else None,
            "epoch": epoch, "config": config_to_dict(cfg), "history": state.history, "best": state.best,
            "bad_epochs": state.bad_epochs, "skipped": state.skipped, "data_info": _plain(parts.info),
            "param_names": {k: p.name for k, p in parts.model.named_parameters()}}
    if improved:
        save_atomic(ckpt, os.path.join(out, BEST))
    save_atomic(ckpt, os.path.join(out, LAST))
    _write_history(os.path.join(out, HISTORY), state.history)


def _finish(cfg: Config, parts: _Parts, state: _Progress, rank: int, world: int, stopped_early: bool,
            seconds: float) -> Dict[str, Any]:
    """The run summary (``train_summary.json`` on rank 0); ranks that ended with different weights are an error."""
    out, best, skipped = cfg.output_dir, state.best, state.skipped
    summary: Dict[str, Any] = {
        "output_dir": out, "best": best, "history": state.history, "epochs_done": len(state.history),
        "stopped_early": stopped_early, "skipped": len(skipped), "skipped_files": skipped,
        "world_size": world, "seconds": round(seconds, 2), "data": _plain(parts.info),
        "last_checkpoint": os.path.join(out, LAST), "best_checkpoint": os.path.join(out, BEST),
    }
    digest = weights_fingerprint(parts.model)
    summary["weights_sha256"] = _gather_digests(digest, world) if world > 1 else [digest]
    if skipped:
        logger.warning("%d bad image(s) skipped (listed in %s)", len(skipped), os.path.join(out, SUMMARY))
    if rank == 0:
        with open(os.path.join(out, SUMMARY), "w", encoding="utf-8") as fh:
            json.dump({k: v for k, v in summary.items() if k != "history"}, fh, indent=2, default=_json_default)
    if len(set(summary["weights_sha256"])) != 1:
        digests = ", ".join(d[:12] for d in summary["weights_sha256"])
        raise ChexcamError(f"the {world} ranks ended with different weights ({digests}); "
                           f"the checkpoints in {out} are rank 0's")
    best_txt = "n/a" if best["metric"] is None else f"{best['metric']:.4f}"
    logger.info("training done in %.1f s: best val mean AUROC %s at epoch %s; %d skipped; outputs in %s",
                summary["seconds"], best_txt, best["epoch"], len(skipped), out)
    return summary


def _plain(obj):
    """JSON-friendly copy of the dataset info (drops nothing but converts numpy scalars)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _diverged(cfg: Config, epoch: int, it: Optional[int], value) -> None:
    """Stop with one line: the loss (``it`` set) or a weight (``it`` None, ``value`` its name) is not finite."""
    last = os.path.join(cfg.output_dir, LAST)
    kept = f"last good checkpoint kept: {last}" if os.path.isfile(last) else "no checkpoint was written yet"
    what = (f"loss became {value} at epoch {epoch + 1} iter {it}" if it is not None
            else f"weights became non-finite ({value}) in epoch {epoch + 1}")
    raise TrainingDiverged(f"{what}; training stopped, {kept}; try a lower train.lr (now {cfg.train.lr})")
