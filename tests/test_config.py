import pytest

from mammo.components.config import Config, demo_config, load_config, paper_config


def test_paper_profile_has_the_paper_settings():
    cfg = paper_config()
    assert cfg.patches.image_size == 331
    assert cfg.train.backbones == ["resnet50", "xception", "nasnetmobile", "nasnetlarge", "efficientnetb7"]
    assert (cfg.train.stage1_epochs, cfg.train.stage1_lr) == (3, 1e-3)
    assert (cfg.train.stage2_epochs, cfg.train.stage2_lr) == (10, 1e-4)
    assert (cfg.train.stage3_max_epochs, cfg.train.stage3_lr, cfg.train.min_lr) == (150, 1e-5, 1e-8)
    assert cfg.gate.auc_threshold == 0.90
    assert cfg.balance.mode == "undersample"


def test_demo_profile_is_small_and_fast():
    cfg = demo_config()
    assert cfg.patches.image_size < 100 and cfg.train.backbones == ["mobilenetv3small"]
    assert cfg.train.weights == "none"


def test_overrides_parse_by_field_type():
    cfg = paper_config().with_overrides(["train.stage1_epochs=1", "train.backbones=resnet50, xception",
                                         "train.flips=false", "gate.auc_threshold=0.5"])
    assert cfg.train.stage1_epochs == 1
    assert cfg.train.backbones == ["resnet50", "xception"]
    assert cfg.train.flips is False
    assert cfg.gate.auc_threshold == 0.5


@pytest.mark.parametrize("override, message", [
    ("train.nope=1", "unknown config key"),
    ("nope.x=1", "unknown config section"),
    ("train.stage1_epochs=abc", "cannot read 'abc' as int"),
    ("train.stage1_epochs", "key=value"),
])
def test_bad_override_gets_a_clear_error(override, message):
    with pytest.raises(ValueError, match=message):
        paper_config().with_overrides([override])


def test_round_trip_through_dict_and_file(tmp_path):
    cfg = demo_config().with_overrides(["seed=7"])
    assert Config.from_dict(cfg.to_dict()) == cfg
    f = tmp_path / "cfg.yaml"
    f.write_text("train:\n  stage2_epochs: 2\npatches:\n  image_size: 96\n")
    loaded = load_config("demo", f, ["seed=3"])
    assert (loaded.train.stage2_epochs, loaded.patches.image_size, loaded.seed) == (2, 96, 3)
    assert loaded.train.backbones == ["mobilenetv3small"]
