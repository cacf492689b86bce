"""Training engine on tiny seeded data: checkpoints, history, resume (also after kill -9), NaN, bad images."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest

import chexcam
from chexcam.engine import train
from chexcam.weights import read_checkpoint

from .conftest import ROOT
from .test_data import MALARIA, make_csv_dataset, tiny_overrides, write_bad_images


def _history(out):
    with open(os.path.join(out, "history.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def test_tiny_run_checkpoints_history_and_auto_resume(tmp_path, caplog):
    csv_path = make_csv_dataset(str(tmp_path / "d"))
    out = str(tmp_path / "run")
    cfg = chexcam.load_config(MALARIA, tiny_overrides(csv_path, out, **{"train.epochs": 2, "train.amp": "true",
                                                                       "train.pos_weight": "true"}))
    with caplog.at_level("INFO", logger="chexcam"):
        res = train.run(cfg)
    assert res["output_dir"] == out and res["epochs_done"] == 2
    assert "train.amp=true ignored" in caplog.text
    assert any("ips" in r.getMessage() and "eta" in r.getMessage() and "lr" in r.getMessage() for r in caplog.records)
    for name in ("last.pdparams", "best.pdparams", "config.yaml", "history.jsonl", "train.log", "train_summary.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    ckpt = read_checkpoint(os.path.join(out, "last.pdparams"))
    assert ckpt["epoch"] == 1 and ckpt["config"]["model"]["name"] == "densenet_tiny"
    assert {"model", "optimizer", "scheduler", "history", "best"} <= set(ckpt)
    hist = _history(out)
    assert [h["epoch"] for h in hist] == [1, 2]
    assert all(0 <= h["val_mean_auroc"] <= 1 and np.isfinite(h["val_loss"]) for h in hist)
    assert set(hist[0]["val_auroc"]) == {"Parasitized"}
    # auto-resume: a longer run continues after epoch 2 and keeps the first two epochs as they were
    cfg3 = chexcam.load_config(MALARIA, tiny_overrides(csv_path, out, **{"train.epochs": 3, "train.pos_weight": "true"}))
    with caplog.at_level("INFO", logger="chexcam"):
        res3 = train.run(cfg3)
    assert "resumed from" in caplog.text and res3["epochs_done"] == 3
    hist3 = _history(out)
    assert hist3[:2] == hist and hist3[2]["epoch"] == 3


def test_pos_weight_from_training_frequencies():
    from chexcam.data import Sample

    s = [Sample("a", np.array([1, 0], np.float32)), Sample("b", np.array([0, 0], np.float32)),
         Sample("c", np.array([0, 0], np.float32)), Sample("d", np.array([1, 0], np.float32))]
    np.testing.assert_allclose(train._pos_weight(s), [1.0, 1.0])
    s.append(Sample("e", np.array([0, 1], np.float32)))
    np.testing.assert_allclose(train._pos_weight(s), [1.5, 4.0])


def test_nan_loss_stops_clearly_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    csv_path = make_csv_dataset(str(tmp_path / "d"))
    out = str(tmp_path / "run")
    train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, out, **{"train.epochs": 1})))
    last = os.path.join(out, "last.pdparams")
    before = open(last, "rb").read()
    from chexcam.data.datasets import ImageDataset

    orig = ImageDataset.__getitem__

    def poisoned(self, i):  # a NaN target in epoch 2 (e.g. a bad label column) makes the loss NaN
        x, y, idx, ok = orig(self, i)
        if self.train and self.epoch == 1:
            y = np.full_like(y, np.nan)
        return x, y, idx, ok

    monkeypatch.setattr(ImageDataset, "__getitem__", poisoned)
    with pytest.raises(train.TrainingDiverged) as info:
        train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, out, **{"train.epochs": 2})))
    msg = str(info.value)
    assert "loss became nan" in msg and "epoch 2 iter 1" in msg and last in msg and "\n" not in msg
    assert open(last, "rb").read() == before
    assert read_checkpoint(last)["epoch"] == 0


def test_bad_images_skip_counts_two_and_error_is_one_line(tmp_path):
    """Acceptance 5: corrupt + missing are skipped (2), RGBA and 16-bit train fine; error names the file."""
    folder = str(tmp_path / "d")
    csv_path = make_csv_dataset(folder, extra_rows=write_bad_images(folder))
    out = str(tmp_path / "skip")
    res = train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, out, **{"data.on_bad_image": "skip",
                                                                                "train.epochs": 1})))
    assert res["skipped"] == 2
    assert sorted(os.path.basename(p) for p in res["skipped_files"]) == ["corrupt.png", "missing.png"]
    with open(os.path.join(out, "train_summary.json")) as fh:
        assert json.load(fh)["skipped"] == 2
    args = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c", MALARIA, "-q"]
    for o in tiny_overrides(csv_path, str(tmp_path / "err"), **{"data.on_bad_image": "error", "train.epochs": 1}):
        args += ["-o", o]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "ccache" not in ln and "warnings.warn" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "corrupt.png" in lines[0] or "missing.png" in lines[0]
    assert "Traceback" not in proc.stderr


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from chexcam.data.datasets import ImageDataset
    orig = ImageDataset.__getitem__
    calls = {"n": 0}

    def getitem(self, i):
        if self.train and self.epoch == 1:
            calls["n"] += 1
            if calls["n"] == 6:   # mid-way through epoch 2 (16 images, batch 4)
                os.kill(os.getpid(), signal.SIGKILL)
        return orig(self, i)

    ImageDataset.__getitem__ = getitem
    from chexcam.cli import run_tool
    from chexcam.engine import train
    sys.exit(run_tool(lambda cfg, args: train.run(cfg) and 0, "killer", sys.argv[1:]))
""")


def _train_cmd(script, csv_path, out):
    args = [sys.executable, script, "-c", MALARIA, "-q"]
    for o in tiny_overrides(csv_path, out, **{"train.epochs": 3}):
        args += ["-o", o]
    return args


@pytest.mark.slow
def test_kill9_mid_epoch_resumes_to_identical_results(tmp_path):
    """Acceptance 3: kill -9 in epoch 2, resume, and end exactly where an uninterrupted run ends."""
    csv_path = make_csv_dataset(str(tmp_path / "d"))
    tool = os.path.join(ROOT, "tools", "train.py")
    ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
    subprocess.run(_train_cmd(tool, csv_path, ref), check=True, capture_output=True, timeout=300)
    killer = tmp_path / "killer.py"
    killer.write_text(_KILLER)
    proc = subprocess.run(_train_cmd(str(killer), csv_path, killed), capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert read_checkpoint(os.path.join(killed, "last.pdparams"))["epoch"] == 0  # epoch 1 done, epoch 2 cut
    assert [h["epoch"] for h in _history(killed)] == [1]
    assert not [f for f in os.listdir(killed) if ".tmp" in f]
    subprocess.run(_train_cmd(tool, csv_path, killed), check=True, capture_output=True, timeout=300)
    h_ref, h_killed = _history(ref), _history(killed)
    for a, b in zip(h_ref, h_killed):
        for key in ("train_seconds",):
            a.pop(key), b.pop(key)
    assert h_ref == h_killed and len(h_ref) == 3
    s_ref = json.load(open(os.path.join(ref, "train_summary.json")))
    s_killed = json.load(open(os.path.join(killed, "train_summary.json")))
    assert s_ref["weights_sha256"] == s_killed["weights_sha256"]
    w_ref = paddle.load(os.path.join(ref, "last.pdparams"))["model"]
    w_killed = paddle.load(os.path.join(killed, "last.pdparams"))["model"]
    for k in w_ref:
        np.testing.assert_array_equal(w_ref[k].numpy(), w_killed[k].numpy())


def test_early_stopping_and_explicit_resume(tmp_path, monkeypatch):
    csv_path = make_csv_dataset(str(tmp_path / "d"))
    out = str(tmp_path / "run")
    # validation AUROC that never improves after epoch 1: patience 2 stops after epoch 3
    scores = iter([[0.7], [0.6], [0.7], [0.9], [0.9]])
    monkeypatch.setattr(train, "per_class_auroc", lambda y, p: next(scores))
    over = {"train.epochs": 5, "train.early_stop_patience": 2}
    res = train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, out, **over)))
    assert res["stopped_early"] and res["epochs_done"] == 3 and res["best"] == {"epoch": 1, "metric": 0.7}
    monkeypatch.undo()
    other = str(tmp_path / "other")
    over = {"train.epochs": 3, "train.resume": os.path.join(out, "best.pdparams")}
    res2 = train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, other, **over)))
    assert [h["epoch"] for h in res2["history"]] == [1, 2, 3] and res2["epochs_done"] == 3
    with pytest.raises(chexcam.ChexcamError, match="nope.pdparams"):
        train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, other, **{"train.resume": "nope.pdparams"})))


def test_prepare_data_tool_fills_cache_and_training_reads_it(tmp_path):
    csv_path = make_csv_dataset(str(tmp_path / "d"))
    cache = str(tmp_path / "cache")
    args = [sys.executable, os.path.join(ROOT, "tools", "prepare_data.py"), "-c", MALARIA, "-q"]
    for o in tiny_overrides(csv_path, str(tmp_path / "o"), **{"data.cache_dir": cache}):
        args += ["-o", o]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "32 written" in proc.stdout
    n = sum(len(f) for _, _, f in os.walk(cache))
    assert n == 32
    res = train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, str(tmp_path / "o"), **{
        "data.cache_dir": cache, "train.epochs": 1})))
    assert res["epochs_done"] == 1


def test_shipped_malaria_config_smoke_on_bundled_cells(tmp_path):
    """The README demo's config, wiring only: 2 steps of 1 epoch on the real cells, then evaluation."""
    from chexcam.data import build_split
    from chexcam.engine import evaluate

    cfg = chexcam.load_config(MALARIA, [f"output_dir={tmp_path}", "train.epochs=1", "train.max_steps_per_epoch=2",
                                        "eval.bootstrap=10", "device=cpu"])
    res = train.run(cfg)
    assert res["epochs_done"] == 1 and res["history"][0]["train_images"] == 16
    m = evaluate.run(cfg)["metrics"]
    assert m["images"] == len(build_split(cfg, "test")) and 0 <= m["binary"]["accuracy"] <= 1


def test_ranks_ending_with_different_weights_is_an_error(tmp_path, monkeypatch):
    """Data-parallel ranks must end identical; if they do not, the run fails (exit status 2), not a log line."""
    csv_path = make_csv_dataset(str(tmp_path / "d"))
    cfg = chexcam.load_config(MALARIA, tiny_overrides(csv_path, str(tmp_path / "run"), **{"train.epochs": 1}))
    os.makedirs(cfg.output_dir)
    monkeypatch.setattr(train, "_gather_digests", lambda digest, world: [digest, "0" * len(digest)])
    parts = train._build(cfg, world=1, use_amp=False)
    with pytest.raises(chexcam.ChexcamError, match="the 2 ranks ended with different weights"):
        train._finish(cfg, parts, train._Progress(), rank=0, world=2, stopped_early=False, seconds=1.0)
