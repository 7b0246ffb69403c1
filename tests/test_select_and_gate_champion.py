"""The champion re-scored on today's test set: real tiny SavedModels exported by the deploy code, a real
evaluation of the challenger, and the gate's paired decision (no mocks)."""

import json

import numpy as np
import pytest

from mammo.components.config import CLASS_NAMES, load_config

#: each class is a grey level (a patch's mean intensity says its class)
LEVELS = np.array([30.0, 80.0, 130.0, 180.0, 230.0])
SIZE = 16


def intensity_model(levels):
    """A Keras classifier that calls a patch the class whose level is nearest its mean intensity:
    logit_k = c (mu_k m - mu_k^2 / 2), i.e. -c/2 (m - mu_k)^2 up to a term the softmax ignores."""
    import keras

    x = keras.Input((SIZE, SIZE, 1), name="images")
    m = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(x))
    out = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="probabilities")(m)
    model = keras.Model(x, out)
    mu = np.asarray(levels) / 255.0
    c = 60.0
    model.get_layer("probabilities").set_weights([(c * mu)[None, :].astype(np.float32),
                                                  (-c * mu ** 2 / 2).astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A balanced dataset (validation, test; 60 patients each), the challenger's train output and its
    real evaluation, and a serving root whose champion was recorded at macro AUC 0.99."""
    from mammo.components.evaluate.logic import run as evaluate
    from mammo.components.imaging import encode_png
    from mammo.components.tfrecords import serialize_patch, write_records

    root = tmp_path_factory.mktemp("champion")
    rng = np.random.default_rng(0)
    dataset = root / "dataset"
    dataset.mkdir()
    for split in ("validation", "test"):
        records = []
        for i in range(120):
            label = i % 5
            level = LEVELS[label] + rng.normal(0, 22.0)  # patches of a class vary: the classes overlap
            img = np.clip(rng.normal(level, 10.0, (SIZE, SIZE)), 0, 255).astype(np.uint8)
            meta = {"patch_id": f"{split}{i}", "case_id": f"c{i}", "patient_id": f"{split}P{i // 2}", "split": split,
                    "source": "cbis-ddsm"}
            records.append(serialize_patch(encode_png(img), label, meta))
        write_records(dataset / f"{split}.tfrecord", records)
    challenger = root / "model_good"
    challenger.mkdir()
    intensity_model(LEVELS).save(challenger / "model.keras")
    (challenger / "report.json").write_text(json.dumps({"step": "train", "backbone": "good"}))
    cfg = load_config("demo", overrides=["evaluate.bootstrap_resamples=50", "evaluate.gradcam_per_class=0",
                                         "gate.paired_resamples=300", "gate.auc_threshold=0.5"])
    evaluate(challenger, dataset, root / "eval_good", cfg)
    return {"root": root, "dataset": dataset, "challenger": challenger, "evaluation": root / "eval_good", "cfg": cfg}


def push_champion(world, name, levels, recorded_auc):
    """Export a model with the deploy code and push it as the served version, recorded at ``recorded_auc``."""
    from mammo.components.deploy.export import export_serving_model
    from mammo.components.deploy.repository import push_to_serving_root

    keras_path = world["root"] / f"{name}.keras"
    intensity_model(levels).save(keras_path)
    serving = world["root"] / f"serving_{name}"
    export = export_serving_model(keras_path, world["root"] / f"export_{name}",
                                  metadata={"backbone": name, "test_metrics": {"macro_auc": recorded_auc}})
    push_to_serving_root(export, serving, "mammo")
    return serving


def gate(world, serving, dataset=True, name="decision"):
    from mammo.components.select_and_gate.logic import run

    out = world["root"] / name
    return run([world["evaluation"]], [world["challenger"]], serving, out, world["root"] / f"{name}_model",
               world["cfg"], world["dataset"] if dataset else None), out


def test_a_challenger_better_on_todays_data_than_a_champion_recorded_higher_is_promoted(world):
    # the champion's levels are shuffled: on today's data it is poor, although its record says 0.99
    serving = push_champion(world, "stale", LEVELS[[4, 3, 2, 1, 0]], recorded_auc=0.99)
    d, out = gate(world, serving)
    cmp = d.champion_comparison
    assert cmp["available"] and cmp["champion_version"] == 1
    assert cmp["champion"] < 0.6 < 0.8 < cmp["challenger"] < 0.99 and d.champion_value == cmp["champion"]
    assert cmp["interval"][0] > 0 and cmp["n"] == 120 and cmp["n_patients"] == 60
    assert d.promoted, d.reason
    record = json.loads((out / "report.json").read_text())
    assert record["champion_comparison"]["difference"] == pytest.approx(cmp["challenger"] - cmp["champion"])
    assert record["model_metadata"]["gate"]["champion_comparison"]["interval"] == cmp["interval"]
    assert "re-scored" in (out / "report.html").read_text()
    # without the dataset the gate falls back to the recorded 0.99, says so, and refuses
    d, _ = gate(world, serving, dataset=False, name="decision_recorded")
    assert not d.promoted and d.champion_value == 0.99
    assert any("no dataset input" in n and "recorded test macro_auc 0.9900 instead" in n for n in d.notes)


def test_a_challenger_within_noise_of_the_champion_is_decided_by_the_paired_interval(world):
    # the same model served: the point estimates are equal, the paired difference is exactly 0
    # (its interval [0, 0] is above -max_auc_drop), while the record claims 0.999
    serving = push_champion(world, "twin", LEVELS, recorded_auc=0.999)
    d, _ = gate(world, serving, name="decision_twin")
    cmp = d.champion_comparison
    assert cmp["difference"] == 0.0 and cmp["interval"] == [0.0, 0.0]
    assert d.promoted and "lower bound above -max_auc_drop" in d.reason
    # a slightly worse champion (levels nudged): the interval, not the point estimate, decides
    serving = push_champion(world, "near", LEVELS + np.array([0, 12, -12, 12, 0]), recorded_auc=0.999)
    d, _ = gate(world, serving, name="decision_near")
    cmp = d.champion_comparison
    low, high = cmp["interval"]
    assert cmp["available"] and abs(cmp["difference"]) < 0.02 and low < 0 < high  # within noise: 0 inside
    assert d.promoted and low > -world["cfg"].gate.max_auc_drop  # promoted: the lower bound is above -0.01
    # a stricter tolerance than the interval's reach refuses the same pair
    strict = world["cfg"].with_overrides({"gate.max_auc_drop": -low / 2})
    from mammo.components.select_and_gate.logic import decide

    again = decide([json.loads((world["evaluation"] / "metrics.json").read_text())], {"version": 1}, strict.gate, cmp)
    assert not again.promoted and "not above -max_auc_drop" in again.reason


def test_an_unloadable_champion_falls_back_to_its_recorded_figure_and_says_why(world):
    serving = push_champion(world, "broken", LEVELS, recorded_auc=0.5)
    version = serving / "mammo" / "1"
    (version / "saved_model.pb").write_bytes(b"not a SavedModel")
    d, _ = gate(world, serving, name="decision_broken")
    assert not d.champion_comparison["available"]
    assert "could not be re-scored on this test set" in d.champion_comparison["reason"]
    assert "saved_model.pb" in d.champion_comparison["reason"]
    assert d.champion_value == 0.5 and d.promoted
    assert any("could not be re-scored" in n and "recorded test macro_auc 0.5000 instead" in n for n in d.notes)


def test_gate_component_body_passes_the_dataset_to_the_paired_comparison(world):
    """The KFP component's Python body with real artifact objects: the new ``dataset`` input is used."""
    from kfp import dsl

    from mammo.components.select_and_gate.component import select_and_gate

    serving = push_champion(world, "stale2", LEVELS[[4, 3, 2, 1, 0]], recorded_auc=0.99)

    def artifact(cls, path):
        a = cls(name=path.name, uri=str(path))
        a.path = str(path)
        return a

    root = world["root"] / "component"
    outs = {k: artifact(cls, root / k) for k, cls in (("decision", dsl.Artifact), ("selected_model", dsl.Model),
                                                      ("report", dsl.HTML), ("metrics", dsl.Metrics))}
    promoted = select_and_gate.python_func(
        evaluations=[artifact(dsl.Artifact, world["evaluation"])], models=[artifact(dsl.Model, world["challenger"])],
        config=world["cfg"].to_dict(), serving_root=str(serving), dataset=artifact(dsl.Dataset, world["dataset"]),
        **outs)
    assert promoted is True
    logged = outs["metrics"].metadata
    assert logged["gate_champion_difference_low"] > 0 and logged["gate_champion_value"] < 0.6
    assert (root / "selected_model" / "model.keras").is_file()
