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
