"""Datasets, splits, transforms, bad images and the resized cache."""

import os

import cv2
import numpy as np
import pytest

import chexcam
from chexcam.data import (
    EpochBatchSampler,
    EvalTransform,
    ImageDataset,
    SquareEvalTransform,
    TenCrop,
    TrainTransform,
    build_split,
    build_splits,
    eval_transform,
)
from chexcam.data.datasets import iterate, make_loader
from chexcam.errors import BadImageError, DataError

from .conftest import ROOT, shared_path

MALARIA = os.path.join(ROOT, "configs", "malaria.yaml")
CHEST = os.path.join(ROOT, "configs", "chestxray14.yaml")


# ---------------------------------------------------------------------------------------------
# helpers shared with test_train*.py / test_eval*.py / test_distributed*.py


def _cell(rng, positive: bool, size: int = 24) -> np.ndarray:
    """A synthetic 'cell': grey noise, plus a dark purple blob when positive (BGR uint8)."""
    img = (rng.normal(180, 12, (size, size, 3))).clip(0, 255).astype(np.uint8)
    if positive:
        cy, cx = rng.integers(5, size - 5, 2)
        cv2.circle(img, (int(cx), int(cy)), 3, (140, 30, 90), -1)
    return img


def make_csv_dataset(folder, n_train=16, n_val=8, n_test=8, seed=0, extra_rows=()):
    """Write tiny PNGs and ``data.csv`` (path, Parasitized, patient, split); returns the CSV path."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    rows = ["path,Parasitized,patient,split"]
    i = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for j in range(n):
            pos = j % 2 == 0
            name = f"img/{split}_{j}.png"
            cv2.imwrite(os.path.join(folder, name), _cell(rng, pos))
            rows.append(f"{name},{int(pos)},p{i // 2},{split}")
            i += 1
    rows.extend(extra_rows)
    path = os.path.join(folder, "data.csv")
    with open(path, "w") as fh:
        fh.write("\n".join(rows) + "\n")
    return path


def tiny_overrides(csv_path, out_dir, **extra):
    """Overrides turning configs/malaria.yaml into a seconds-long run on make_csv_dataset's data."""
    over = {
        "data.dataset": "csv", "data.csv": csv_path, "model.name": "densenet_tiny", "data.resize": 24,
        "data.crop": 20, "data.resize_mode": "square", "train.epochs": 3, "train.batch_size": 4,
        "eval.batch_size": 8, "eval.bootstrap": 20, "output_dir": out_dir, "train.log_interval": 2,
        "device": "cpu",
    }
    over.update(extra)
    return [f"{k}={v}" for k, v in over.items()]


def write_bad_images(folder):
    """A corrupt PNG, an RGBA PNG, a 16-bit PNG (all listed) and a listed-but-missing file."""
    rng = np.random.default_rng(1)
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    with open(os.path.join(folder, "img", "corrupt.png"), "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20 + b"IEND\xaeB`\x82")
    rgba = np.dstack([_cell(rng, True), np.full((24, 24), 255, np.uint8)])
    cv2.imwrite(os.path.join(folder, "img", "rgba.png"), rgba)
    deep = (rng.integers(0, 4096, (24, 24, 3))).astype(np.uint16)
    cv2.imwrite(os.path.join(folder, "img", "deep16.png"), deep)
    return ["img/corrupt.png,1,q1,train", "img/rgba.png,1,q2,train", "img/deep16.png,0,q3,train",
            "img/missing.png,0,q4,train"]


# ---------------------------------------------------------------------------------------------
# malaria (bundled real cells)


def test_malaria_split_is_patient_disjoint_stratified_and_seeded():
    cfg = chexcam.load_config(MALARIA)
    splits = build_splits(cfg).splits
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 300
    pats = {k: {s.patient for s in v} for k, v in splits.items()}
    assert not pats["train"] & pats["val"] and not pats["train"] & pats["test"] and not pats["val"] & pats["test"]
    for split in ("train", "val", "test"):
        rate = np.mean([s.target[0] for s in splits[split]])
        assert 0.35 < rate < 0.65, (split, rate)  # stratified: both classes everywhere, near 50%
        assert all(s.target.dtype == np.float32 and s.target.shape == (1,) for s in splits[split])
    assert all(("Parasitized" in s.path) == (s.target[0] == 1) for s in splits["train"])
    assert 0.15 < sizes["test"] / 300 < 0.35
    again = chexcam.load_config(MALARIA, ["seed=0"])
    assert [s.path for s in build_split(again, "test")] == [s.path for s in splits["test"]]
    other = chexcam.load_config(MALARIA, ["seed=1"])
    assert [s.path for s in build_split(other, "test")] != [s.path for s in splits["test"]]


def test_malaria_patient_parsing():
    from chexcam.data.malaria import malaria_patient

    assert malaria_patient("C101P62ThinF_IMG_20150918_151149_cell_87.png") == "P62"
    assert malaria_patient("C51AP12thinF_IMG_20150724_153313_cell_106.png") == "P12"
    assert malaria_patient("C12NThinF_IMG_20150614_124212_cell_213.png") == "C12"


def test_malaria_missing_folders_is_one_line(tmp_path):
    cfg = chexcam.load_config(MALARIA, [f"data.root={tmp_path}"])
    with pytest.raises(DataError, match="Parasitized") as info:
        build_split(cfg, "train")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# ChestX-ray14 with the real NIH metadata


@pytest.mark.shared_data
def test_official_split_counts_and_patient_disjoint_val():
    meta = shared_path("chestxray14", "metadata")
    cfg = chexcam.load_config(CHEST, [f"data.root={os.path.dirname(meta)}"])
    s = build_splits(cfg)
    train, val, test = s.splits["train"], s.splits["val"], s.splits["test"]
    assert len(train) + len(val) == 86524 and len(test) == 25596
    assert {p.patient for p in val}.isdisjoint({p.patient for p in train})
    assert {p.patient for p in test}.isdisjoint({p.patient for p in train} | {p.patient for p in val})
    n_pat = len({p.patient for p in train} | {p.patient for p in val})
    assert len({p.patient for p in val}) == int(np.ceil(0.1 * n_pat))
    assert s.info["labels_release"] == "2017" and s.info["labels_file"].endswith("Data_Entry_2017.csv.gz")
    by_name = {os.path.basename(p.path): p for p in train + val + test}
    # 00000001_001.png: Cardiomegaly|Emphysema; "No Finding" is all zeros
    t = by_name["00000001_001.png"].target
    assert t.shape == (14,) and t.dtype == np.float32 and t[1] == 1 and t[10] == 1 and t.sum() == 2
    assert by_name["00000003_000.png"].target.sum() == 1  # Hernia
    nofind = [p for p in train if p.path.endswith("00000002_000.png")][0]
    assert nofind.target.sum() == 0


@pytest.mark.shared_data
def test_chexnet_split_counts_and_v2020_and_view_filter():
    meta = shared_path("chestxray14", "metadata")
    root = os.path.dirname(meta)
    cfg = chexcam.load_config(CHEST, [f"data.root={root}", "data.split_mode=chexnet"])
    s = build_splits(cfg).splits
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (78468, 11219, 22433)
    cfg = chexcam.load_config(CHEST, [f"data.root={root}", "data.view=PA",
                                      f"data.metadata={meta}/Data_Entry_2017_v2020.csv.gz"])
    res = build_splits(cfg)
    assert res.info["labels_release"] == "v2020"
    n = sum(len(v) for v in res.splits.values())
    assert 60000 < n < 70000  # PA views only (67,310 of 112,120)


@pytest.mark.shared_data
def test_random_patient_split_on_real_metadata_is_disjoint():
    meta = shared_path("chestxray14", "metadata")
    cfg = chexcam.load_config(CHEST, [f"data.root={os.path.dirname(meta)}", "data.split_mode=random_patient"])
    s = build_splits(cfg).splits
    pats = [{p.patient for p in s[k]} for k in ("train", "val", "test")]
    assert not pats[0] & pats[1] and not pats[0] & pats[2] and not pats[1] & pats[2]
    assert sum(len(v) for v in s.values()) == 112120


@pytest.mark.shared_data
def test_chestxray14_flat_and_archive_layouts_find_images(tmp_path):
    src = shared_path("chestxray14", "images")
    meta = shared_path("chestxray14", "metadata")
    import shutil

    (tmp_path / "images_001" / "images").mkdir(parents=True)
    names = sorted(f for f in os.listdir(src) if f.endswith(".png"))[:2]
    for name in names:
        shutil.copy(os.path.join(src, name), tmp_path / "images_001" / "images" / name)
    cfg = chexcam.load_config(CHEST, [f"data.root={tmp_path}", f"data.metadata={meta}/Data_Entry_2017.csv.gz",
                                      f"data.split_dir={meta}"])
    res = build_splits(cfg)
    found = [p for v in res.splits.values() for p in v if os.path.basename(p.path) in names]
    assert len(found) == 2 and all("images_001" in p.path and os.path.isfile(p.path) for p in found)
    assert res.info["images_on_disk"] == 2


def test_chestxray14_missing_metadata_and_bad_label_are_one_line(tmp_path):
    cfg = chexcam.load_config(CHEST, [f"data.root={tmp_path}"])
    with pytest.raises(DataError, match="Data_Entry_2017"):
        build_split(cfg, "train")
    cfg = chexcam.load_config(CHEST, [f"data.root={tmp_path}", "data.labels=[Pneumonia, Lung_Cancer]",
                                      "model.num_classes=2"])
    with pytest.raises(DataError, match="Lung_Cancer"):
        build_split(cfg, "train")


def test_chestxray14_tiny_metadata_official_split(tmp_path):
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    tv, te = [], []
    for p in range(1, 11):
        for f in range(2):
            name = f"{p:08d}_{f:03d}.png"
            rows.append(f"{name},{'No Finding' if f else 'Effusion|Mass'},{f},{p:08d},50,M,{'PA' if p % 2 else 'AP'}")
            (te if p > 8 else tv).append(name)
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(tv) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(te) + "\n")
    cfg = chexcam.load_config(CHEST, [f"data.root={tmp_path}", "data.val_fraction=0.25"])
    s = build_splits(cfg).splits
    assert len(s["test"]) == 4 and len(s["train"]) + len(s["val"]) == 16 and len(s["val"]) == 4
    eff = chexcam.CHESTXRAY14_LABELS.index("Effusion")
    assert all(x.target[eff] == (x.path.endswith("_000.png")) for x in s["train"])
    pa = build_splits(chexcam.load_config(CHEST, [f"data.root={tmp_path}", "data.view=PA"])).splits
    assert sum(len(v) for v in pa.values()) == 10


# ---------------------------------------------------------------------------------------------
# generic CSV, bad images, loader


def test_csv_dataset_paths_relative_to_csv(tmp_path):
    csv_path = make_csv_dataset(str(tmp_path))
    cfg = chexcam.load_config(MALARIA, tiny_overrides(csv_path, str(tmp_path / "out")))
    s = build_splits(cfg).splits
    assert [len(s[k]) for k in ("train", "val", "test")] == [16, 8, 8]
    assert all(os.path.isfile(x.path) for x in s["train"])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,Parasitized\na.png,1\n")
    with pytest.raises(DataError, match=r"bad\.csv.*path"):
        build_split(chexcam.load_config(MALARIA, tiny_overrides(str(bad), "o")), "train")
    bad.write_text("path,Parasitized\na.png,maybe\n")
    with pytest.raises(DataError, match=r"row 2.*maybe"):
        build_split(chexcam.load_config(MALARIA, tiny_overrides(str(bad), "o")), "train")


def test_bad_images_skip_and_error(tmp_path):
    csv_path = make_csv_dataset(str(tmp_path), extra_rows=write_bad_images(str(tmp_path)))
    cfg = chexcam.load_config(MALARIA, tiny_overrides(csv_path, "o", **{"data.on_bad_image": "skip"}))
    train = build_split(cfg, "train")
    ds = ImageDataset(train, cfg, train=True)
    loader, sampler = make_loader(ds, 5, True, 0)
    skipped = {}
    n = sum(int(x.shape[0]) for x, _, _ in iterate(loader, sampler, ds, 0, "skip", skipped))
    assert n == len(train) - 2
    assert sorted(os.path.basename(p) for p in skipped) == ["corrupt.png", "missing.png"]
    with pytest.raises(BadImageError) as info:
        list(iterate(loader, sampler, ds, 0, "error", {}))
    msg = str(info.value)
    assert "\n" not in msg and ("corrupt.png" in msg or "missing.png" in msg)


def test_loader_batches_are_seeded_and_worker_independent(tmp_path):
    csv_path = make_csv_dataset(str(tmp_path))
    cfg = chexcam.load_config(MALARIA, tiny_overrides(csv_path, "o"))
    ds = ImageDataset(build_split(cfg, "train"), cfg, train=True)

    def epoch(workers, e):
        loader, sampler = make_loader(ds, 4, True, 0, num_workers=workers)
        return [(x.numpy(), i) for x, _, i in iterate(loader, sampler, ds, e, "error")]

    a, b = epoch(0, 1), epoch(2, 1)
    assert len(a) == 4 and all(np.array_equal(x1, x2) and np.array_equal(i1, i2) for (x1, i1), (x2, i2) in zip(a, b))
    c = epoch(0, 2)
    assert not all(np.array_equal(i1, i2) for (_, i1), (_, i2) in zip(a, c))


def test_epoch_batch_sampler_shards_and_never_yields_empty():
    s0 = EpochBatchSampler(10, 3, True, seed=0, rank=0, world=2)
    s1 = EpochBatchSampler(10, 3, True, seed=0, rank=1, world=2)
    b0, b1 = list(s0), list(s1)
    assert len(b0) == len(b1) == len(s0) == 2 and all(len(b) > 0 for b in b0 + b1)
    flat0, flat1 = sum(b0, []), sum(b1, [])
    assert sorted(flat0 + flat1) == list(range(10)) and not set(flat0) & set(flat1)
    odd = EpochBatchSampler(7, 3, False, rank=1, world=2)
    assert sum(len(b) for b in odd) == 4  # padded by wrapping: 8 indices over 2 ranks
    assert len(EpochBatchSampler(100, 4, True, max_batches=3)) == 3


# ---------------------------------------------------------------------------------------------
# transforms


def test_train_transform_crop_flip_and_seeding():
    img = np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8)
    tf = TrainTransform(256, 224, (0.5,) * 3, (0.25,) * 3, hflip=True)
    a = tf(img, np.random.default_rng([0, 1, 2]))
    b = tf(img, np.random.default_rng([0, 1, 2]))
    assert a.shape == (3, 224, 224) and a.dtype == np.float32 and np.array_equal(a, b)
    outs = {tf(img, np.random.default_rng(k)).tobytes() for k in range(8)}
    assert len(outs) > 1


def test_ten_crop_and_square_eval():
    img = np.random.default_rng(0).integers(0, 255, (300, 260, 3)).astype(np.uint8)
    tc = TenCrop(256, 224, (0, 0, 0), (1, 1, 1))
    crops = tc(img)
    assert crops.shape == (10, 3, 224, 224)
    np.testing.assert_array_equal(crops[5], crops[0][:, :, ::-1])  # mirrored top-left
    centre, _ = EvalTransform(256, 224, (0, 0, 0), (1, 1, 1))(img)
    np.testing.assert_array_equal(crops[4], centre)
    sq, geo = SquareEvalTransform(96, 96, (0, 0, 0), (1, 1, 1))(img)
    assert sq.shape == (3, 96, 96) and geo.box_to_original((0, 0, 96, 96)) == (0.0, 0.0, 260.0, 300.0)
    cfg = chexcam.load_config(MALARIA)
    assert isinstance(eval_transform(cfg), SquareEvalTransform)
    assert type(eval_transform(chexcam.load_config(CHEST))) is EvalTransform


# ---------------------------------------------------------------------------------------------
# cache


def test_prepare_cache_is_read_instead_of_originals(tmp_path):
    from chexcam.data.cache import cache_folder, cache_path
    from chexcam.data.datasets import prepare_cache

    csv_path = make_csv_dataset(str(tmp_path))
    cfg = chexcam.load_config(MALARIA, tiny_overrides(csv_path, "o", **{"data.cache_dir": str(tmp_path / "c")}))
    counts = prepare_cache(cfg)
    assert counts == {"written": 32, "existing": 0, "skipped": 0}
    assert prepare_cache(cfg)["existing"] == 32
    train = build_split(cfg, "train")
    ds = ImageDataset(train, cfg)
    entry = cache_path(cache_folder(cfg), train[0].path)
    assert ds.source(0) == entry and cv2.imread(entry).shape[:2] == (24, 24)
    plain = ImageDataset(train, chexcam.load_config(MALARIA, tiny_overrides(csv_path, "o")))
    np.testing.assert_allclose(ds[0][0], plain[0][0], atol=1e-6)  # square resize to 24 either way
