"""The compiled pipeline (real KFP compiler) has the cluster shape users rely on."""

import yaml

from mammo.pipelines.cli import main


def _docs(path):
    return list(yaml.safe_load_all(path.read_text()))


def test_compile_writes_gpu_train_loop_and_conditional_deploy(tmp_path):
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "--out", str(out)]) == 0
    spec, platform = _docs(out)
    root = spec["root"]["dag"]["tasks"]

    # train iterates over the backbones parameter
    loop = next(t for t in root.values() if t.get("parameterIterator", {}).get("items", {}).get("inputParameter")
                == "pipelinechannel--backbones")
    loop_dag = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert "train-op" in loop_dag and "evaluate-op" in loop_dag

    # the train executor requests one nvidia.com/gpu and runs the GPU image
    train_exec = spec["deploymentSpec"]["executors"]["exec-train-op"]["container"]
    acc = train_exec["resources"]["accelerator"]
    assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
    assert "gpu" in train_exec["image"]
    assert train_exec["resources"]["cpuRequest"] > 0 and train_exec["resources"]["memoryRequest"] > 0

    # ...and tolerates GPU nodes (kfp-kubernetes platform spec)
    tolerations = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-op"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}.items() <= tolerations[0].items()

    # deploy sits under a condition on the gate's promoted output
    cond = next(t for t in root.values() if "triggerPolicy" in t)
    assert cond["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--select-and-gate-op-Output'] == true"
    cond_dag = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
    assert list(cond_dag) == ["deploy-op"]
    assert "deploy-op" not in root

    # select_and_gate collects the per-backbone outputs
    gate_inputs = root["select-and-gate-op"]["inputs"]["artifacts"]
    assert set(gate_inputs) == {"evaluations", "models"}


def test_compiled_components_do_not_pip_install(tmp_path):
    out = tmp_path / "pipeline.yaml"
    main(["compile", "--out", str(out)])
    spec = _docs(out)[0]
    for name, ex in spec["deploymentSpec"]["executors"].items():
        cmd = " ".join(ex["container"]["command"] + ex["container"].get("args", []))
        assert "pip install" not in cmd, name  # the package comes with our images
