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
from typing import Any, Dict, List, Optional

import numpy as np
import paddle

from .. import build_model
from ..config import Config, config_to_dict, save_config
from ..data.datasets import ImageDataset, build_split, build_splits, iterate, make_loader
from ..errors import ChexcamError
from ..metrics.classification import bce_loss, mean_auroc, per_class_auroc
from ..utils import atomic_path, seed_everything, set_device
from ..weights import read_checkpoint, save_atomic, state_dict_of, weights_fingerprint
from .evaluate import predict

logger = logging.getLogger(__name__)

LAST, BEST, HISTORY, SUMMARY = "last.pdparams", "best.pdparams", "history.jsonl", "train_summary.json"


class TrainingDiverged(ChexcamError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
    y = np.stack([s.target for s in samples])
    pos = y.sum(0)
    neg = len(y) - pos
    return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0).astype(np.float32)


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
        save_config(cfg, os.path.join(out, "config.yaml"))
        handler = logging.FileHandler(os.path.join(out, "train.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        chex_logger.addHandler(handler)
    try:
        return _run(cfg, rank, world, use_amp)
    finally:
        if handler is not None:
            chex_logger.removeHandler(handler)
            handler.close()


def _run(cfg: Config, rank: int, world: int, use_amp: bool) -> Dict[str, Any]:
    out = cfg.output_dir
    t_start = time.time()
    info = build_splits(cfg).info
    train_samples, val_samples = build_split(cfg, "train"), build_split(cfg, "val")
    if not val_samples:
        raise ChexcamError(f"dataset '{cfg.data.dataset}' has an empty val split; training needs one")
    model = build_model(cfg)
    model.train()
    net = paddle.DataParallel(model) if world > 1 else model

    pos_weight = None
    if cfg.train.pos_weight:
        pw = _pos_weight(train_samples)
        pos_weight = paddle.to_tensor(pw)
        logger.info("positive weights: %s", ", ".join(f"{lab} {w:.2f}" for lab, w in zip(cfg.data.labels, pw)))
    loss_fn = paddle.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    sched = None
    if cfg.train.scheduler == "plateau":
        sched = paddle.optimizer.lr.ReduceOnPlateau(cfg.train.lr, mode="min", factor=cfg.train.plateau_factor,
                                                    patience=cfg.train.plateau_patience)
    opt = paddle.optimizer.Adam(learning_rate=sched if sched is not None else cfg.train.lr,
                                beta1=cfg.train.beta1, beta2=cfg.train.beta2, parameters=model.parameters(),
                                weight_decay=cfg.train.weight_decay or None)
    scaler = paddle.amp.GradScaler() if use_amp else None

    start_epoch, history, bad_epochs = 0, [], 0
    best: Dict[str, Any] = {"epoch": None, "metric": None}
    skipped: Dict[str, str] = {}
    resume = _resume_path(cfg)
    if resume:
        ckpt = read_checkpoint(resume)
        model.set_state_dict(state_dict_of(ckpt))
        if "optimizer" in ckpt:
            opt.set_state_dict(_rename_opt_state(ckpt["optimizer"], ckpt.get("param_names", {}), model))
        if sched is not None and ckpt.get("scheduler"):
            sched.set_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt.get("epoch", -1)) + 1
        history = list(ckpt.get("history", []))
        best = dict(ckpt.get("best", best))
        bad_epochs = int(ckpt.get("bad_epochs", 0))
        skipped = dict(ckpt.get("skipped", {}))
        logger.info("resumed from %s: %d epoch(s) done, continuing at epoch %d", resume, start_epoch, start_epoch + 1)
    if rank == 0:
        _write_history(os.path.join(out, HISTORY), history)

    train_ds = ImageDataset(train_samples, cfg, train=True)
    val_ds = ImageDataset(val_samples, cfg, train=False)
    loader, sampler = make_loader(train_ds, cfg.train.batch_size, True, cfg.seed, cfg.data.num_workers,
                                  rank, world, cfg.train.max_steps_per_epoch)
    steps = len(sampler)
    logger.info("training %s on %d images (%d val) for %d epochs, %d steps/epoch x %d rank(s), batch %d",
                cfg.model.name, len(train_samples), len(val_samples), cfg.train.epochs, steps, world,
                cfg.train.batch_size)
    stopped_early = False
    run_t0, run_steps = time.time(), 0
    total_steps = max(1, (cfg.train.epochs - start_epoch) * steps)
    for epoch in range(start_epoch, cfg.train.epochs):
        paddle.seed(cfg.seed * 1000 + epoch)
        model.train()
        t0 = last_t = time.time()
        seen = seen_since = 0
        losses = []
        batches = iterate(loader, sampler, train_ds, epoch, cfg.data.on_bad_image, skipped, yield_empty=world > 1)
        for it, (x, y, idx) in enumerate(batches, 1):
            # all images of this rank's batch were bad: join the all-reduce with a zero-weighted loss
            weight = 0.0 if len(idx) == 0 else 1.0
            if use_amp:
                with paddle.amp.auto_cast():
                    logits = net(x)
                loss = loss_fn(logits.astype("float32"), y) * weight
                scaler.scale(loss).backward()
            else:
                loss = loss_fn(net(x), y) * weight
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
            run_steps += 1
            if it % cfg.train.log_interval == 0 or it == steps:
                now = time.time()
                ips = seen_since * world / max(now - last_t, 1e-9)
                eta = (now - run_t0) / run_steps * (total_steps - run_steps)
                logger.info("epoch %d/%d iter %d/%d loss %.4f lr %.2e ips %.1f img/s eta %s",
                            epoch + 1, cfg.train.epochs, it, steps, float(np.mean(losses[-cfg.train.log_interval:])),
                            opt.get_lr(), ips, _fmt_time(eta))
                last_t, seen_since = now, 0
        if world > 1:
            _average_buffers(model, world)
        train_time = time.time() - t0
        res = predict(model, val_ds, cfg.eval.batch_size, cfg.data.num_workers, cfg.data.on_bad_image, skipped)
        val_loss = bce_loss(res["targets"], res["logits"])
        aurocs = per_class_auroc(res["targets"], res["probs"])
        mean = mean_auroc(aurocs)
        lr_used = opt.get_lr()
        if sched is not None:
            sched.step(val_loss)
        metric = mean if mean is not None else -val_loss
        improved = best["metric"] is None or metric > best["metric"]
        if improved:
            best = {"epoch": epoch + 1, "metric": metric}
            bad_epochs = 0
        else:
            bad_epochs += 1
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
               "val_loss": val_loss, "val_mean_auroc": mean,
               "val_auroc": {lab: a for lab, a in zip(cfg.data.labels, aurocs)}, "lr": lr_used,
               "train_images": seen * world, "train_seconds": round(train_time, 3), "skipped": len(skipped)}
        history.append(row)
        logger.info("epoch %d/%d done: train loss %.4f, val loss %.4f, val mean AUROC %s%s (%.1f s)",
                    epoch + 1, cfg.train.epochs, row["train_loss"] or float("nan"), val_loss,
                    "n/a" if mean is None else f"{mean:.4f}", " (best)" if improved else "", train_time)
        if rank == 0:
            ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "epoch": epoch, "config": config_to_dict(cfg), "history": history, "best": best,
                    "bad_epochs": bad_epochs, "skipped": skipped, "data_info": _plain(info),
                    "param_names": {k: p.name for k, p in model.named_parameters()}}
            if improved:
                save_atomic(ckpt, os.path.join(out, BEST))
            save_atomic(ckpt, os.path.join(out, LAST))
            _write_history(os.path.join(out, HISTORY), history)
        if cfg.train.early_stop_patience and bad_epochs >= cfg.train.early_stop_patience:
            logger.info("early stopping: no val improvement for %d epoch(s)", bad_epochs)
            stopped_early = True
            break

    summary: Dict[str, Any] = {
        "output_dir": out, "best": best, "history": history, "epochs_done": len(history),
        "stopped_early": stopped_early, "skipped": len(skipped), "skipped_files": skipped,
        "world_size": world, "seconds": round(time.time() - t_start, 2), "data": _plain(info),
        "last_checkpoint": os.path.join(out, LAST), "best_checkpoint": os.path.join(out, BEST),
    }
    digest = weights_fingerprint(model)
    summary["weights_sha256"] = _gather_digests(digest, world) if world > 1 else [digest]
    if world > 1 and len(set(summary["weights_sha256"])) != 1:
        logger.error("ranks ended with different weights: %s", summary["weights_sha256"])
    if skipped:
        logger.warning("%d bad image(s) skipped (listed in %s)", len(skipped), os.path.join(out, SUMMARY))
    if rank == 0:
        with open(os.path.join(out, SUMMARY), "w", encoding="utf-8") as fh:
            json.dump({k: v for k, v in summary.items() if k != "history"}, fh, indent=2, default=_json_default)
    best_txt = "n/a" if best["metric"] is None else f"{best['metric']:.4f}"
    logger.info("training done in %.1f s: best val mean AUROC %s at epoch %s; %d skipped; outputs in %s",
                summary["seconds"], best_txt, best["epoch"], len(skipped), out)
    return summary


def _plain(obj):
    """JSON-friendly copy of the dataset info (drops nothing but converts numpy scalars)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _diverged(cfg: Config, epoch: int, it: int, value: float) -> None:
    last = os.path.join(cfg.output_dir, LAST)
    kept = f"last good checkpoint kept: {last}" if os.path.isfile(last) else "no checkpoint was written yet"
    raise TrainingDiverged(f"loss became {value} at epoch {epoch + 1} iter {it}; training stopped, {kept}; "
                           f"try a lower train.lr (now {cfg.train.lr})")
