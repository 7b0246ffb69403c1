import json

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


# -- values checked at load: each row is a bad value, the key it is reported under and what is allowed ---

BAD_VALUES = [
    ("balance.mode", "undersampling", "one of: undersample, oversample, class_weights, none"),
    ("train.preprocessing", "imagenet", "one of: backbone, rescale"),
    ("train.mixed_precision", "always", "one of: auto, on, off"),
    ("train.jit_compile", "xla", "one of: auto, on, off"),
    ("train.fill_mode", "mirror", "one of: reflect, wrap, constant, nearest"),
    ("gate.metric", "auc", "one of: macro_auc, macro_f1, accuracy"),
    ("balance.validation_fraction", "1.5", "in [0, 1]"),
    ("ingest.normal_test_fraction", "-0.1", "in [0, 1]"),
    ("patches.min_tissue_fraction", "2", "in [0, 1]"),
    ("evaluate.specificities", "0.9,1.2", "in [0, 1]"),
    ("gate.auc_threshold", "nan", "in [0, 1]"),
    ("patches.image_size", "0", ">= 1"),
    ("patches.records_per_shard", "0", ">= 1"),
    ("train.batch_size", "-2", ">= 0"),
    ("train.stage1_lr", "0", "> 0"),
    ("validate.min_image_side", "0", ">= 1"),
]


@pytest.mark.parametrize("key, value, allowed", BAD_VALUES, ids=[row[0] for row in BAD_VALUES])
def test_bad_value_fails_at_load_naming_key_and_allowed_values(key, value, allowed, tmp_path):
    with pytest.raises(ValueError) as override:
        paper_config().with_overrides([f"{key}={value}"])
    section, name = key.split(".")
    f = tmp_path / "bad.yaml"
    f.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ValueError) as from_file:
        load_config("demo", f)
    data = paper_config().to_dict()
    data[section][name] = [float(v) for v in value.split(",")] if key == "evaluate.specificities" else value
    with pytest.raises(ValueError) as from_dict:  # the pipeline's config parameter
        Config.from_dict(data)
    for info in (override, from_file, from_dict):
        assert f"config key {key!r} must be {allowed}" in str(info.value)


@pytest.mark.parametrize("override, read_as", [
    ("train.mixed_precision=off", "off"),
    ("balance.mode=class_weights", "class_weights"),
    ("balance.validation_fraction=0", 0.0),
    ("balance.validation_fraction=1", 1.0),
    ("train.input_size=0", 0),
])
def test_allowed_values_and_bounds_load(override, read_as):
    key, raw = override.split("=")
    section, name = key.split(".")
    assert getattr(getattr(paper_config().with_overrides([override]), section), name) == read_as


def test_yaml_on_off_switches_read_as_words(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text("train:\n  mixed_precision: off\n  jit_compile: on\n")  # YAML 1.1 booleans
    cfg = load_config("paper", f)
    assert (cfg.train.mixed_precision, cfg.train.jit_compile) == ("off", "on")


def test_image_side_bounds_must_be_ordered():
    with pytest.raises(ValueError, match="min_image_side.*must not exceed validate.max_image_side"):
        paper_config().with_overrides(["validate.min_image_side=5000", "validate.max_image_side=4000"])


def test_config_dict_stays_json():
    for cfg in (paper_config(), demo_config()):
        data = json.loads(json.dumps(cfg.to_dict()))
        assert Config.from_dict(data) == cfg


@pytest.mark.parametrize("text, message", [
    ("balance:\n  mode: undersampling\n", "bad.yaml: config key 'balance.mode' must be one of"),
    ("- train\n- patches\n", "bad.yaml: expected a mapping of sections"),
    ("train: [unclosed\n", "bad.yaml: not valid YAML"),
])
def test_bad_config_file_is_named_in_the_error(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config("paper", f)
