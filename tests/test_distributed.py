"""Acceptance 4: ``paddle.distributed.launch --nproc_per_node 2`` on CPU (gloo) trains data-parallel,
rank 0 alone writes checkpoints, and both ranks end with identical weights."""

import json
import os
import subprocess
import sys

import paddle
import pytest

from .conftest import ROOT
from .test_data import MALARIA, make_csv_dataset, tiny_overrides


@pytest.mark.slow
def test_two_process_cpu_launch_trains_with_identical_weights(tmp_path):
    csv_path = make_csv_dataset(str(tmp_path / "d"))
    out = str(tmp_path / "run")
    args = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
            "--log_dir", str(tmp_path / "launch"), os.path.join(ROOT, "tools", "train.py"), "-c", MALARIA]
    for o in tiny_overrides(csv_path, out, **{"train.epochs": 2}):
        args += ["-o", o]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    logs = ""
    for name in sorted(os.listdir(tmp_path / "launch")):
        if name.startswith("workerlog"):
            logs += open(tmp_path / "launch" / name, errors="replace").read()[-3000:]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs
    with open(os.path.join(out, "train_summary.json")) as fh:
        summary = json.load(fh)
    assert summary["world_size"] == 2 and summary["epochs_done"] == 2
    digests = summary["weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    with open(os.path.join(out, "history.jsonl")) as fh:
        hist = [json.loads(line) for line in fh]
    # 16 training images, batch 4 per rank, 2 ranks -> 2 steps per epoch, all 16 images seen
    assert [h["epoch"] for h in hist] == [1, 2] and hist[0]["train_images"] == 16
    ckpt = paddle.load(os.path.join(out, "last.pdparams"))
    assert ckpt["epoch"] == 1
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    worker1 = open(tmp_path / "launch" / "workerlog.1", errors="replace").read()
    assert "epoch 1/2 iter" not in worker1  # rank 1 logs warnings only


def _launch(tmp_path, tool, config, overrides, name):
    logs = tmp_path / f"launch_{name}"
    args = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(logs),
            os.path.join(ROOT, "tools", tool), "-c", config]
    for o in overrides:
        args += ["-o", o]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    text = "".join(open(logs / f, errors="replace").read()[-3000:] for f in sorted(os.listdir(logs))
                   if f.startswith("workerlog"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + text
    return text


@pytest.mark.slow
def test_two_process_infer_and_eval_give_the_one_process_records_and_metrics(tmp_path):
    """Issue 11: under paddle.distributed.launch (2 gloo processes on CPU) infer_cam.py splits its inputs by
    rank and writes the same records as one process; eval.py gathers the probabilities and rank 0 writes the
    same metrics."""
    import cv2
    import numpy as np

    import chexcam
    from chexcam.engine import evaluate, infer

    from .test_e2e_pipeline import CHEST, TINY

    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(5)
    for i in range(7):
        cv2.imwrite(str(inp / f"x{i}.png"), cv2.GaussianBlur(rng.integers(0, 255, (70 + i, 90, 3), np.uint8), (0, 0), 3))
    (inp / "x3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # skipped by the rank that has it
    common = TINY + [f"infer.input={inp}", "infer.batch_size=2", "data.on_bad_image=skip", "infer.workers=1"]
    paddle.seed(0)
    one = infer.run(chexcam.load_config(CHEST, common + [f"output_dir={tmp_path / 'one'}"]))
    _launch(tmp_path, "infer_cam.py", CHEST, common + [f"output_dir={tmp_path / 'two'}"], "infer")
    a, b = tmp_path / "one" / "cam", tmp_path / "two" / "cam"
    summary = json.load(open(b / "summary.json"))
    assert summary["ranks"] == 2 and summary["images"] == one["images"] == 6 and summary["skipped"] == 1
    names = sorted(f for f in os.listdir(a) if f.endswith(".json") and f != "summary.json")
    assert names == sorted(f for f in os.listdir(b) if f.endswith(".json") and f != "summary.json")
    for f in names:
        ra, rb = json.load(open(a / f)), json.load(open(b / f))
        assert os.path.isfile(b / f.replace(".json", "_cam.png"))
        for k, ca in ra["classes"].items():
            cb = rb["classes"][k]
            assert abs(ca["probability"] - cb["probability"]) <= 2e-6
            np.testing.assert_allclose(np.array(ca["boxes"]).reshape(-1, 4), np.array(cb["boxes"]).reshape(-1, 4), atol=0.2)
            np.testing.assert_allclose(ca["peak"], cb["peak"], atol=0.2)

    csv_path = make_csv_dataset(str(tmp_path / "d"), n_train=2, n_val=6, n_test=11)
    cfg = chexcam.load_config(MALARIA, tiny_overrides(csv_path, str(tmp_path / "e1"), **{"model.allow_random": "true"}))
    paddle.seed(0)
    weights = str(tmp_path / "w.pdparams")
    paddle.save(chexcam.build_model(cfg).state_dict(), weights)
    over = tiny_overrides(csv_path, str(tmp_path / "e1"), **{"model.weights": weights, "infer.workers": 1})
    ref = evaluate.run(chexcam.load_config(MALARIA, over))["metrics"]
    _launch(tmp_path, "eval.py", MALARIA, [o.replace("/e1", "/e2") for o in over], "eval")
    got = json.load(open(tmp_path / "e2" / "metrics.json"))
    assert got["images"] == ref["images"] == 11
    assert got["binary"]["confusion"] == ref["binary"]["confusion"]
    assert got["binary"]["auroc"] == pytest.approx(ref["binary"]["auroc"], abs=1e-9)
    assert got["mean_auroc_ci"] == pytest.approx(ref["mean_auroc_ci"], abs=1e-9)
