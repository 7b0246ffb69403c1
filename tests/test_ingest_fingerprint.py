"""Data freshness: the fingerprint of ingest's inputs, and what it does to KFP's cache.

The backend's cache key of a task (``backend/src/v2/cacheutils/cache.go`` GenerateCacheKey) is its
input parameter values, the *names* of its input artifacts, its output specs and its container.
``_simulate`` replays that rule over the compiled pipeline for the data steps: a task whose key
was seen before is a hit and reuses the recorded output artifact names; otherwise it runs and its
outputs get new names (new MLMD artifacts), which changes the keys downstream.
"""

import hashlib
import json
import os
import time
from itertools import count

import pytest
import yaml

from mammo.components.config import demo_config
from mammo.components.ingest.fingerprint import fingerprint, stamps
from mammo.pipelines.pipeline import compile_pipeline, pipeline_arguments
from mammo.pipelines.run_tasks import fingerprint_data, resolve_config

DATA_STEPS = ("ingest", "validate-data")


def _tree(root, files: dict[str, bytes]):
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def data(tmp_path):
    cbis, normals = tmp_path / "cbis", tmp_path / "normals"
    _tree(cbis, {"mass_case_description_train_set.csv": b"a,b\n1,2\n", "CBIS-DDSM/P_00001/1.dcm": b"x" * 100})
    _tree(normals, {"case0001/A_0001_1.LEFT_CC.LJPEG": b"y" * 50})
    return cbis, normals


def test_fingerprint_is_stable_and_follows_every_kind_of_change(data, tmp_path):
    cbis, normals = data
    first = fingerprint(cbis, normals)
    assert first == fingerprint(cbis, normals) and first.startswith("sha256:") and first.endswith(":3")
    assert [s.rel for s in stamps(cbis)] == ["CBIS-DDSM/P_00001/1.dcm", "mass_case_description_train_set.csv"]

    dcm = cbis / "CBIS-DDSM/P_00001/1.dcm"
    seen = {first}
    dcm.write_bytes(b"x" * 101)  # resized
    seen.add(fingerprint(cbis, normals))
    stat = dcm.stat()
    dcm.write_bytes(b"z" * 101)  # rewritten, same size
    os.utime(dcm, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    seen.add(fingerprint(cbis, normals))
    _tree(normals, {"case0002/B.LJPEG": b"n"})  # added
    seen.add(fingerprint(cbis, normals))
    (cbis / "mass_case_description_train_set.csv").unlink()  # removed
    seen.add(fingerprint(cbis, normals))
    assert len(seen) == 5
    # the roots' own paths are not hashed: the same files mounted elsewhere fingerprint the same
    moved = tmp_path / "elsewhere"
    cbis.rename(moved)
    assert fingerprint(moved, normals) == fingerprint(moved, normals)


def test_fingerprint_of_a_gcs_prefix_uses_object_generations(gcs_client, gcs_bucket):
    """Against the GCS emulator: a "folder" placeholder is not a file; a rewrite is a new generation."""
    bucket = gcs_client.bucket(gcs_bucket)
    for name, data in (("cbis/a.csv", b"abc"), ("cbis/", b""), ("cbis/d/b.dcm", b"123456789"), ("other/c", b"x")):
        bucket.blob(name).upload_from_string(data)
    listed = stamps(f"gs://{gcs_bucket}/cbis")
    assert [(s.rel, s.size) for s in listed] == [("a.csv", 3), ("d/b.dcm", 9)]
    assert [s.version for s in listed] == [str(bucket.get_blob(n).generation) for n in ("cbis/a.csv", "cbis/d/b.dcm")]
    before = fingerprint(f"gs://{gcs_bucket}/cbis")
    assert fingerprint(f"gs://{gcs_bucket}/cbis") == before
    bucket.blob("cbis/a.csv").upload_from_string(b"abc")  # the same bytes written again: a new generation
    assert fingerprint(f"gs://{gcs_bucket}/cbis") != before


def _key(task: dict, executor: dict, params: dict, artifacts: dict) -> str:
    """GenerateCacheKey + GenerateFingerPrint: sha256 of the key's JSON."""
    key = {"inputArtifactNames": artifacts, "inputParameterValues": params,
           "outputs": sorted(task.get("outputs", [])), "container": {"image": executor["image"],
                                                                   "cmdArgs": executor["command"] + executor["args"]}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _simulate(spec: dict, args: dict, cache: dict, names) -> dict[str, bool]:
    """One run of the data steps under the backend's cache rule; returns {task: cache hit}."""
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    outputs = {"fingerprint-data": {"Output": fingerprint_data.python_func(args["data_uri"], args["normals_uri"])}}
    flat = {k: args[k] for k in ("backbones", "auc_threshold", "max_auc_drop", "balance_mode", "image_size", "weights")}
    outputs["resolve-config"] = {"Output": resolve_config.python_func(config=args["config"], **flat)}
    produced: dict[str, dict[str, str]] = {}
    hits = {}
    for name in DATA_STEPS:
        task = tasks[name]
        comp = spec["components"][task["componentRef"]["name"]]
        params = {}
        for pname, src in task["inputs"].get("parameters", {}).items():
            if "componentInputParameter" in src:
                params[pname] = args[src["componentInputParameter"]]
            else:
                out = src["taskOutputParameter"]
                params[pname] = outputs[out["producerTask"]][out["outputParameterKey"]]
        artifacts = {a: [produced[s["taskOutputArtifact"]["producerTask"]][s["taskOutputArtifact"]["outputArtifactKey"]]]
                     for a, s in task["inputs"].get("artifacts", {}).items()}
        key = _key({"outputs": list(comp.get("outputDefinitions", {}).get("artifacts", {}))},
                   executors[comp["executorLabel"]]["container"], params, artifacts)
        hits[name] = key in cache
        if not hits[name]:  # executed: new output artifacts
            cache[key] = {o: f"artifact-{next(names)}" for o in comp.get("outputDefinitions", {}).get("artifacts", {})}
        produced[name] = cache[key]
    return hits


def test_cached_data_steps_follow_the_data(data, tmp_path):
    cbis, normals = data
    out = tmp_path / "pipeline.yaml"
    compile_pipeline(str(out), demo_config())
    spec = next(yaml.safe_load_all(out.read_text()))
    args = pipeline_arguments(demo_config(), str(cbis), str(normals), str(tmp_path / "models"), 2)
    cache, names = {}, count()

    assert _simulate(spec, args, cache, names) == {"ingest": False, "validate-data": False}  # first run
    assert _simulate(spec, args, cache, names) == {"ingest": True, "validate-data": True}  # unchanged data
    time.sleep(0.01)
    (cbis / "CBIS-DDSM/P_00001/1.dcm").write_bytes(b"new image")  # one file changed
    assert _simulate(spec, args, cache, names) == {"ingest": False, "validate-data": False}
    assert _simulate(spec, args, cache, names) == {"ingest": True, "validate-data": True}  # cached again
