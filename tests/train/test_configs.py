"""Training configs nest their model's config: one place for each default, JSON round trips, old runs read."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from pleura.models import ClassifierConfig, UNetConfig
from pleura.train.cls import ClsTrainConfig
from pleura.train.seg import SegTrainConfig


def test_seg_config_nests_the_unet_and_sizes_its_head_from_the_schema():
    cfg = SegTrainConfig(schema="sparse", model=UNetConfig(width=8, depth=3, norm="group"))
    model = cfg.model_config()
    assert (model.width, model.depth, model.norm, model.num_classes, model.schema) == (8, 3, "group", 4, "sparse")
    assert SegTrainConfig().model_config().num_classes == 8  # the dense schema's classes


@pytest.mark.parametrize("config", [SegTrainConfig(model=UNetConfig(width=8)),
                                    ClsTrainConfig(model=ClassifierConfig(tap="bottleneck", dropout=0.1))])  # fmt: skip
def test_configs_round_trip_through_json(config):
    back = type(config).from_dict(json.loads(json.dumps(asdict(config))))
    assert back == config and type(back.model) is type(config.model)


def test_a_run_written_before_the_nesting_is_read_with_its_model_fields():
    """config.json of older runs kept width/depth/norm/upsample at the top level: they become ``model``."""
    old = {"schema": "sparse", "width": 4, "depth": 2, "norm": "instance", "upsample": "bilinear", "epochs": 3}
    cfg = SegTrainConfig.from_dict(old)
    assert (cfg.model.width, cfg.model.depth, cfg.model.norm, cfg.model.upsample, cfg.epochs) == (
        4, 2, "instance", "bilinear", 3)  # fmt: skip
    cls = ClsTrainConfig.from_dict({"init": "scratch", "tap": "bottleneck", "width": 4, "depth": 2})
    assert (cls.model.tap, cls.model.unet.width, cls.model.unet.depth) == ("bottleneck", 4, 2)


def test_a_bad_nested_field_is_named():
    with pytest.raises(ValueError, match=r"SegTrainConfig.model has unknown fields \['widht'\]"):
        SegTrainConfig(model={"widht": 8})
    with pytest.raises(ValueError, match=r"UNetConfig\.depth"):
        SegTrainConfig(model={"depth": 0})
    with pytest.raises(ValueError, match="class_names"):
        ClsTrainConfig(model=ClassifierConfig(num_classes=2, class_names=("covid", "other")))


def test_resume_compares_the_nested_model(tmp_path_factory, tmp_path):
    from kit import simulated

    from pleura.train.distributed import DistEnv
    from pleura.train.loop import TrainError
    from pleura.train.seg import SegTrainer

    tiny_data = simulated(tmp_path_factory, "cfg", n=4, seed=11, size=64, frames=1, workers=1)
    tiny = {"batch_size": 4, "epochs": 1, "patience": 100}
    SegTrainer(SegTrainConfig(model=UNetConfig(width=4, depth=2), **tiny), tiny_data, tmp_path / "r", DistEnv()).fit()
    with pytest.raises(TrainError, match="the run was trained with model="):
        SegTrainer(SegTrainConfig(model=UNetConfig(width=8, depth=2), **{**tiny, "epochs": 2}), tiny_data,
                   tmp_path / "r", DistEnv()).fit(resume=True)  # fmt: skip
