from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pleura.data import LUSDataset, ManifestError, default_augmentation, read_manifest
from pleura.labels import DENSE, DIAGNOSES, convert


def test_item_layout(make_dataset, anatomy):
    root = make_dataset()
    ds = LUSDataset(root, "dense")
    assert len(ds) == 4
    item = ds[1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 64, 64)
    assert item["image"].min() >= 0 and item["image"].max() <= 1
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (64, 64)
    assert torch.equal(item["mask"], torch.from_numpy(convert(anatomy, "anatomy", "dense")).long())
    assert item["label"] == DIAGNOSES.index("pneumonia")
    assert (item["id"], item["clip_id"], item["patient_id"], item["probe"]) == ("f1", "c0", "c0", "linear")
    png = np.array(Image.open(root / "images" / "f1.png"), dtype=np.float32) / 255
    assert np.allclose(item["image"][0].numpy(), png)


def test_images_only_and_unknown_diagnosis(make_dataset):
    root = make_dataset(masks=(), diagnoses=("covid", "tuberculosis"))
    ds = LUSDataset(root, schema=None)
    assert "mask" not in ds[0] and ds[0]["label"] == 0
    assert ds[1]["label"] == -1


@pytest.mark.parametrize("masks,schema", [(("anatomy",), "dense"), (("anatomy",), "sparse"), (("dense",), "sparse")])
def test_mask_derived_from_finer_schema(make_dataset, anatomy, masks, schema):
    ds = LUSDataset(make_dataset(masks=masks), schema)
    expected = convert(anatomy, "anatomy", schema)
    assert np.array_equal(ds[0]["mask"].numpy(), expected)


def test_no_mask_column_for_schema(make_dataset):
    root = make_dataset(masks=("dense",))
    with pytest.raises(ManifestError, match=r"manifest\.csv: no mask_anatomy column"):
        LUSDataset(root, "anatomy")


def test_files_are_read_lazily(make_dataset):
    root = make_dataset()
    (root / "images" / "f2.png").unlink()
    ds = LUSDataset(root, "dense")  # no error until the item is read
    ds[1]
    with pytest.raises(ManifestError, match=r"images/f2\.png: image file not found \(row id 'f2'"):
        ds[2]


def test_unreadable_image_names_file(make_dataset):
    root = make_dataset()
    (root / "images" / "f0.png").write_bytes(b"not a png")
    with pytest.raises(ManifestError, match=r"images/f0\.png: cannot read image"):
        LUSDataset(root, None)[0]


def test_rgb_image_is_converted_to_gray(make_dataset):
    root = make_dataset()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(root / "images" / "f0.png")
    image = LUSDataset(root, "dense")[0]["image"]
    assert image.shape == (1, 64, 64) and torch.all(image == 1.0)


def test_mask_with_class_outside_schema_names_file(make_dataset, save_mask):
    root = make_dataset()
    bad = np.full((64, 64), DENSE.num_classes, dtype=np.uint8)
    save_mask(bad, root / "masks" / "f0_dense.png", "anatomy")
    with pytest.raises(ValueError, match=rf"f0_dense\.png: class index {DENSE.num_classes} is not in schema 'dense'"):
        LUSDataset(root, "dense")[0]


def test_mask_size_mismatch_names_file(make_dataset, save_mask):
    root = make_dataset()
    save_mask(np.zeros((32, 64), dtype=np.uint8), root / "masks" / "f3_dense.png", "dense")
    with pytest.raises(ManifestError, match=r"f3_dense\.png: mask is 64x32 \(WxH\) but image .*f3\.png is 64x64"):
        LUSDataset(root, "dense")[3]


def test_empty_mask_cell_falls_back_then_errors(make_dataset, anatomy, write_manifest):
    root = make_dataset()
    rows = read_manifest(root)
    rows[0]["mask_dense"] = ""
    rows[1]["mask_dense"] = rows[1]["mask_anatomy"] = ""
    write_manifest(root, rows)
    ds = LUSDataset(root, "dense")
    assert np.array_equal(ds[0]["mask"].numpy(), convert(anatomy, "anatomy", "dense"))
    with pytest.raises(ManifestError, match=r"row id 'f1' .*: empty mask_dense, mask_anatomy"):
        ds[1]


def test_rows_subset(make_dataset):
    root = make_dataset()
    rows = [r for r in read_manifest(root) if r["clip_id"] == "c1"]
    ds = LUSDataset(root, "sparse", rows=rows)
    assert len(ds) == 2 and [ds[i]["id"] for i in range(2)] == ["f2", "f3"]


def test_augmentation_depends_only_on_seed_epoch_index(make_dataset):
    root = make_dataset()
    ds = LUSDataset(root, "dense", default_augmentation("dense"), seed=5)
    a = ds[2]
    ds[0], ds[3]  # other reads do not disturb item 2
    b = ds[2]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert torch.equal(a["image"], LUSDataset(root, "dense", default_augmentation("dense"), seed=5)[2]["image"])
    ds.set_epoch(1)
    assert not torch.equal(ds[2]["image"], a["image"])
    ds.set_epoch(0)
    assert torch.equal(ds[2]["image"], a["image"])
    assert not torch.equal(LUSDataset(root, "dense", default_augmentation("dense"), seed=6)[2]["image"], a["image"])


def test_loader_results_do_not_depend_on_workers(make_dataset):
    ds = LUSDataset(make_dataset(), "dense", default_augmentation("dense"))
    ds.set_epoch(3)
    batches = {w: list(DataLoader(ds, batch_size=2, num_workers=w)) for w in (0, 2)}
    for b0, b2 in zip(batches[0], batches[2], strict=True):
        assert b0["id"] == b2["id"]
        assert torch.equal(b0["image"], b2["image"]) and torch.equal(b0["mask"], b2["mask"])
    assert batches[0][0]["image"].shape == (2, 1, 64, 64) and batches[0][0]["label"].dtype == torch.int64
