"""``mammo``: the command line (ARCHITECTURE.md section 3).

Pipeline commands: ``synth``, ``run``, ``demo``, ``compile``, ``submit``, ``schedule``, ``predict``,
``rollback``; ``images build`` builds the images the compiled pipeline names.
Step commands (debugging, and what the images run): ``ingest``, ``validate``, ``extract``,
``balance``, ``train``, ``evaluate``, ``deploy``. Heavy imports happen inside each command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("mammo")


def _config(args):
    from mammo.components.config import load_config

    return load_config(getattr(args, "profile", "paper"), getattr(args, "config", None), getattr(args, "set", None))


def _add_config_args(p: argparse.ArgumentParser, default_profile: str = "paper") -> None:
    p.add_argument("--profile", default=default_profile, choices=["paper", "demo"],
                   help=f"settings profile (default: {default_profile})")
    p.add_argument("--config", help="YAML/JSON file of settings overriding the profile")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.stage1_epochs=1 (repeatable)")


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


# -- pipeline commands ---------------------------------------------------------------------------


def cmd_synth(args) -> None:
    from mammo.components.synth.logic import synthesize

    summary = synthesize(args.out, per_class=args.per_class, seed=args.seed,
                         image_shape=(args.image_rows, args.image_cols))
    _print_json(summary.__dict__)


def cmd_run(args) -> dict:
    from mammo.pipelines.local_run import run_local

    cfg = _config(args)
    log.info("running the pipeline locally (kfp.local, %s runner): backbones %s, %d px patches",
             args.runner, cfg.train.backbones, cfg.patches.image_size)
    summary = run_local(cfg, args.data, args.normals, args.out, args.serving_root, args.extract_shards,
                        runner=args.runner)
    _report_run(summary, Path(args.out))
    return summary


def _report_run(summary: dict, out: Path) -> None:
    print("\n=== mammo run finished in %.0fs ===" % summary["seconds"])
    c = summary["counts"]
    print(f"rows read {c['rows_read']} = ingested {c['rows_ingested']} + rejected {c['rows_rejected']}")
    for name, m in summary["backbones"].items():
        print(f"{name}: validation macro AUC {m['validation']['macro_auc']:.4f} acc {m['validation']['accuracy']:.4f}"
              f" | test macro AUC {m['test']['macro_auc']:.4f} acc {m['test']['accuracy']:.4f}")
    g = summary["gate"]
    if g:
        print(f"selected {summary['selected_backbone']}: promoted={g['promoted']} ({g['reason']})")
    if summary["serving"]:
        s = summary["serving"]
        print(f"deployed {s['model_name']} version {s['version']} at {s['path']}")
    print(f"summary: {out / 'run-summary.json'}")


def cmd_demo(args) -> None:
    from mammo.components.synth.logic import synthesize

    out = Path(args.out)
    t0 = time.time()
    log.info("demo 1/2: synthesising a CBIS-DDSM-like dataset (%d abnormalities per class) in %s",
             args.per_class, out / "data")
    synthesize(out / "data", per_class=args.per_class, seed=args.seed)
    log.info("demo 2/2: running the pipeline with the demo profile")
    args.data, args.normals = str(out / "data" / "cbis"), str(out / "data" / "normals")
    args.profile, args.config = "demo", None
    args.serving_root = args.serving_root or str(out / "serving")
    summary = cmd_run(args)
    print(f"demo done in {time.time() - t0:.0f}s")
    if not (summary.get("gate") or {}).get("promoted"):
        raise SystemExit("demo finished but no model was promoted: " + str((summary.get("gate") or {}).get("reason")))


def cmd_compile(args) -> None:
    from mammo.components.config import CPU_IMAGE, GPU_IMAGE
    from mammo.pipelines.pipeline import compile_pipeline

    cfg = _config(args)  # cluster.* settings are compile-time: resources, GPU type, retries, parallelism
    compile_pipeline(args.out, cfg)
    print(f"compiled pipeline ({args.profile} profile; images {CPU_IMAGE}, {GPU_IMAGE}) -> {args.out}")


def cmd_lint(args) -> None:
    from mammo.pipelines.lint import lint_file

    problems = [(path, p) for path in args.files for p in lint_file(path)]
    for path, problem in problems:
        print(f"{path}: {problem}")
    if problems:
        raise SystemExit(f"{len(problems)} problem(s): the KFP backend would reject or mis-run this pipeline")
    print(f"OK: {', '.join(args.files)} pass the KFP backend's input-resolution rules")


def _auth(args):
    from mammo.pipelines.remote import Auth

    return Auth.from_env(args.namespace, args.token, args.token_file, args.in_cluster_credentials)


def cmd_submit(args) -> None:
    from mammo.pipelines.remote import submit_run

    done = submit_run(args.host, _config(args), args.data, args.normals, args.serving_root,
                      experiment=args.experiment, run_name=args.run_name, extract_shards=args.extract_shards,
                      auth=_auth(args))
    print(f"submitted run {done.run_id} (pipeline version {done.version_name}) to {args.host}: {done.url}")


def cmd_schedule(args) -> None:
    from mammo.pipelines.remote import schedule_runs, validate_cron

    validate_cron(args.cron)  # a clear error before compiling or contacting the server
    done = schedule_runs(args.host, _config(args), args.data, args.normals, args.serving_root, cron=args.cron,
                         experiment=args.experiment, job_name=args.job_name, extract_shards=args.extract_shards,
                         auth=_auth(args))
    if done.replaced:
        print(f"replaced the recurring run(s) named {args.job_name}: {', '.join(done.replaced)}")
    print(f"scheduled recurring run {done.recurring_run_id} ({args.cron}, one at a time, no catch-up; "
          f"pipeline version {done.version_name}) on {args.host}: {done.url}")


def cmd_images_build(args) -> None:
    from mammo.pipelines.images import build_images

    kinds = tuple(args.only) if args.only else ("cpu", "gpu")
    result = build_images(kinds, local_base=args.local_base, tag=args.tag, mirror=args.mirror)
    for built in result["images"].values():
        print(f"built {built['tag']} in {built['seconds']:.0f}s (user {built['user']})")
    if result["base"]:
        print(f"base {result['base']} ({result['base_seconds']:.0f}s; 0 = reused)")


def cmd_predict(args) -> int:
    from mammo.components.deploy import predict

    cfg = _config(args)
    backend = predict.open_backend(args.model, args.server, args.rest, args.model_name, args.version,
                                   cfg.deploy.request_timeout_s)
    if args.heatmap:
        results = predict.heatmap_files(backend, args.images, args.heatmap, cfg, patch_mm=args.patch_mm,
                                        pixel_spacing_mm=args.pixel_spacing_mm, stride=args.stride,
                                        batch=args.batch, size=args.size, progress=True)
    else:
        results = predict.predict_files(backend, args.images, args.signature, args.size,
                                        cfg.deploy.max_image_pixels)
    _print_json(results)
    failed = [r["file"] for r in results if "error" in r]
    if failed:
        log.error("%d of %d file(s) failed: %s", len(failed), len(results), ", ".join(failed))
    return 1 if failed else 0


# -- step commands -------------------------------------------------------------------------------


def cmd_ingest(args) -> None:
    from mammo.components.ingest.logic import run

    _print_json(run(args.data, args.normals, args.out, _config(args)).to_dict())


def cmd_validate(args) -> None:
    from mammo.components.validate_data.logic import run

    # prints what failed and exits with runtime.EXIT_DATA_REJECTED on a critical failure
    run(args.cases, args.out, _config(args))


def cmd_extract(args) -> None:
    from dataclasses import asdict

    from mammo.components.extract_patches.logic import run

    report = run(args.cases, args.out, _config(args), shard_index=args.shard_index, num_shards=args.num_shards,
                 workers=args.workers)
    _print_json(asdict(report))


def cmd_balance(args) -> None:
    from dataclasses import asdict

    from mammo.components.balance_split.logic import run

    _print_json(asdict(run(args.patches, args.out, _config(args))))


def cmd_train(args) -> None:
    from dataclasses import asdict

    from mammo.components.train.logic import run

    cfg = _config(args)
    _print_json(asdict(run(args.dataset, args.backbone, args.out, cfg)))


def cmd_bench_train(args) -> None:
    """Training throughput per backbone: images/s, step time, input-wait share, peak memory."""
    from mammo.components.train.backbones import BACKBONES
    from mammo.components.train.bench import bench_train, format_table

    cfg = _config(args)
    train_cfg = cfg.with_overrides({"train.weights": args.weights, "train.mixed_precision": args.mixed_precision,
                                    "train.jit_compile": args.xla}).train
    names: list[str] = []
    for name in args.backbone or ["paper"]:
        if name == "paper":
            names += [n for n, b in BACKBONES.items() if b.paper]
        elif name == "all":
            names += [n for n in BACKBONES if n != "tinycnn"]
        else:
            names.append(name)
    results, failed = [], []
    print("\n".join(format_table([]).splitlines()[:2]), flush=True)  # the header; a row per backbone follows
    for name in names:
        try:
            result = bench_train(name, args.image_size, args.batch, args.steps, args.warmup, train_cfg,
                                 stage=args.stage, data_dir=args.data, seed=cfg.seed)
        except Exception as exc:  # one backbone failing (e.g. out of memory) must not hide the others
            log.error("%s: benchmark failed: %s: %s", name, type(exc).__name__, str(exc).splitlines()[0][:300])
            failed.append(name)
            print(f"| {name} | failed: {type(exc).__name__} |", flush=True)
            continue
        results.append(result)
        print(format_table([result]).splitlines()[-1], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in results], indent=2))
        print(f"results: {args.json}")
    if failed:
        raise RuntimeError(f"benchmark failed for {', '.join(failed)}")


def cmd_evaluate(args) -> None:
    from mammo.components.evaluate.logic import run

    result = run(args.model, args.dataset, args.out, _config(args), args.backbone, cases=args.cases)
    summary = {s: {k: result[s][k] for k in ("n", "accuracy", "macro_auc", "macro_f1")} for s in ("validation", "test")}
    summary["shortcut_audit_macro_auc"] = (result.get("shortcut_audit") or {}).get("macro_auc")
    _print_json(summary)


def cmd_select_and_gate(args) -> None:
    from mammo.components.select_and_gate.logic import run

    d = run(args.evaluation, args.model, args.serving_root, args.out, args.selected_model, _config(args), args.dataset)
    _print_json({k: getattr(d, k) for k in ("selected_backbone", "promoted", "forced", "reason", "metric", "value",
                                            "champion_version", "champion_value", "champion_comparison", "notes")})


def cmd_deploy(args) -> None:
    from mammo.components.deploy.logic import run

    overrides = {"model_name": args.model_name, "keep_versions": args.keep_versions,
                 "wait_for_rest_url": args.wait_for_rest_url, "wait_timeout_s": args.wait_timeout_s}
    args.set = list(args.set) + [f"deploy.{k}={v}" for k, v in overrides.items() if v is not None]
    _print_json(run(args.model, args.decision, args.serving_root, args.out, _config(args)))


def cmd_rollback(args) -> None:
    from mammo.components.deploy.repository import current_champion, rollback

    cfg = _config(args)
    keep = cfg.deploy.keep_versions if args.keep_versions is None else args.keep_versions
    pushed = rollback(args.serving_root, args.model_name, to_version=args.to_version,
                      wait_for_rest_url=args.wait_for_rest_url or "", wait_timeout_s=args.wait_timeout_s,
                      keep_versions=keep)
    champion = current_champion(args.serving_root, args.model_name) or {}
    _print_json({"model_name": args.model_name, **pushed.to_dict(),
                 "rolled_back_from": champion.get("rolled_back_from"), "replaced_version": champion.get("replaced_version")})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mammo", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic CBIS-DDSM-layout dataset with learnable lesions")
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-rows", type=int, default=512)
    p.add_argument("--image-cols", type=int, default=320)
    p.set_defaults(func=cmd_synth)

    def runner_arg(p):
        p.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess",
                       help="subprocess: this Python (fast, development); docker: every task in the image the "
                            "compiled pipeline names, as on Kubeflow (build them with `mammo images build`)")

    def run_args(p, data_required=True):
        p.add_argument("--out", required=True, help="run directory (kfp.local outputs, run-summary.json)")
        p.add_argument("--serving-root", help="model repository TF Serving reads (default: OUT/serving)")
        p.add_argument("--extract-shards", type=int, default=1, help="parallel patch-extraction tasks")
        runner_arg(p)
        if data_required:
            p.add_argument("--data", required=True, help="CBIS-DDSM folder: the four CSVs and CBIS-DDSM/ tree")
            p.add_argument("--normals", required=True, help="DDSM normals folder (DICOM, optional manifest.csv)")

    p = sub.add_parser("run", help="run the whole pipeline locally (kfp.local)")
    run_args(p)
    _add_config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="synth + run with the demo profile (minutes on a laptop)")
    p.add_argument("--out", default="demo-run")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serving-root")
    p.add_argument("--extract-shards", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    runner_arg(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("images", help="the pipeline's container images")
    images_sub = p.add_subparsers(dest="images_command", required=True)
    p = images_sub.add_parser("build", help="build the CPU and GPU images under the names `mammo compile` uses")
    p.add_argument("--local-base", action="store_true",
                   help="first make the base image from Debian packages (debootstrap + docker import, reused "
                        "while its recipe is unchanged), for machines that reach no container registry")
    p.add_argument("--tag", help="build REPOSITORY:TAG instead of the configured names' tag (then set "
                                 "MAMMO_CPU_IMAGE / MAMMO_GPU_IMAGE to use them)")
    p.add_argument("--only", action="append", choices=["cpu", "gpu"], help="build only this image (repeatable)")
    p.add_argument("--mirror", help="Debian mirror for --local-base (default: $MAMMO_DEBIAN_MIRROR or deb.debian.org)")
    p.set_defaults(func=cmd_images_build)

    p = sub.add_parser("compile", help="compile the pipeline to a KFP YAML (cluster.* settings from the profile)")
    p.add_argument("--out", default="pipeline.yaml")
    _add_config_args(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("lint", help="check a compiled pipeline YAML against the KFP backend's input-resolution rules")
    p.add_argument("files", nargs="+", metavar="FILE.yaml")
    p.set_defaults(func=cmd_lint)

    for name, func in (("submit", cmd_submit), ("schedule", cmd_schedule)):
        p = sub.add_parser(name, help=f"{name} the pipeline on a Kubeflow Pipelines API server")
        p.add_argument("--host", required=True,
                       help="KFP API URL, e.g. http://localhost:8888 (kubectl port-forward svc/ml-pipeline)")
        p.add_argument("--data", required=True, help="gs://bucket/prefix or a path mounted in the pods")
        p.add_argument("--normals", required=True)
        p.add_argument("--serving-root", required=True, help="model repository TF Serving reads")
        p.add_argument("--experiment", default="mammo")
        p.add_argument("--namespace", default="", help="profile namespace of the experiment (multi-user Kubeflow)")
        p.add_argument("--token", default="", help="bearer token for the KFP API (default: $KF_PIPELINES_TOKEN)")
        p.add_argument("--token-file", default="", help="file holding a bearer token")
        p.add_argument("--in-cluster-credentials", action="store_true",
                       help="use this pod's service-account token (submitting from inside the cluster)")
        p.add_argument("--extract-shards", type=int, default=4)
        if name == "submit":
            p.add_argument("--run-name")
        else:
            p.add_argument("--cron", required=True,
                           help="KFP cron: six fields, seconds first, e.g. '0 0 3 * * 0' (03:00 every Sunday)")
            p.add_argument("--job-name", default="mammo-retrain")
        _add_config_args(p)
        p.set_defaults(func=func)

    p = sub.add_parser("predict", help="classify patches, or scan whole mammograms into heatmaps (--heatmap), "
                                       "with a SavedModel or a TF Serving server")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a serving SavedModel directory (<root>/<name>/<version>)")
    src.add_argument("--server", help="TF Serving gRPC HOST:PORT")
    src.add_argument("--rest", help="TF Serving REST base URL, e.g. http://localhost:8501")
    p.add_argument("--model-name", default="mammo")
    p.add_argument("--version", type=int, default=None, help="served version (remote only; default: the latest)")
    p.add_argument("--signature", default="serving_default", choices=["serving_default", "predict_pixels"],
                   help="serving_default sends PNG bytes, predict_pixels raw uint8 pixels")
    p.add_argument("--size", type=int, default=None,
                   help="resize to SIZE x SIZE on the client with the training resampler (default: the model "
                        "resizes; heatmaps: the model's input size)")
    p.add_argument("--heatmap", metavar="DIR", help="whole mammograms: write per image an overlay PNG, the "
                   "probability maps (.npy) and the top regions (JSON) into DIR")
    p.add_argument("--patch-mm", type=float, help="heatmap window side in mm (default: the model record's "
                   "patch_mm, else patches.normal_crop_mm)")
    p.add_argument("--pixel-spacing-mm", type=float, help="heatmap: the images' pixel spacing (default: the "
                   "DICOM header's, else the model record's / patches.default_pixel_spacing_mm)")
    p.add_argument("--stride", type=float, help="heatmap window step as a share of the window (deploy.heatmap_stride)")
    p.add_argument("--batch", type=int, help="heatmap windows per request (deploy.heatmap_batch)")
    p.add_argument("images", nargs="+")
    _add_config_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("ingest", help="step: CSVs + DICOM tree -> cases/rejects Parquet")
    p.add_argument("--data", required=True)
    p.add_argument("--normals", required=True)
    p.add_argument("--out", required=True)
    _add_config_args(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("validate_data", aliases=["validate"], help="step: great-expectations suite over cases")
    p.add_argument("--cases", required=True, help="ingest output folder")
    p.add_argument("--out", required=True)
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("extract_patches", aliases=["extract"], help="step: patches (one shard) -> TFRecords + manifest")
    p.add_argument("--cases", required=True, help="ingest output folder")
    p.add_argument("--out", required=True)
    p.add_argument("--shard-index", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    _add_config_args(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("balance_split", aliases=["balance"], help="step: split by patient, balance, write split TFRecords")
    p.add_argument("--patches", required=True, nargs="+", help="extract output folder(s)")
    p.add_argument("--out", required=True)
    _add_config_args(p)
    p.set_defaults(func=cmd_balance)

    p = sub.add_parser("train", help="step: three-stage fine-tuning of one backbone")
    p.add_argument("--dataset", required=True, help="balance output folder")
    p.add_argument("--backbone", required=True)
    p.add_argument("--out", required=True)
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench-train", help="training throughput per backbone (images/s, step time, input wait, memory)")
    p.add_argument("--backbone", action="append", metavar="NAME",
                   help="registry name, 'paper' (the five; default) or 'all'; repeatable")
    p.add_argument("--image-size", type=int, default=331, help="stored patch side (the model resizes to its input)")
    p.add_argument("--batch", type=int, default=0, help="batch per accelerator (default: the backbone's)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing, XLA compilation)")
    p.add_argument("--stage", type=int, default=3, choices=[1, 2, 3], help="which stage's trainable layers")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--xla", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--weights", default="none", help="none (default, no download), imagenet or a file")
    p.add_argument("--data", help="a balance output folder to read train TFRecords from (default: synthetic)")
    p.add_argument("--json", help="also write the results to this JSON file")
    _add_config_args(p)
    p.set_defaults(func=cmd_bench_train)

    p = sub.add_parser("evaluate", help="step: validation/test metrics of a trained model")
    p.add_argument("--model", required=True, help="train output folder")
    p.add_argument("--dataset", required=True, help="balance_split output folder")
    p.add_argument("--backbone", help="default: the train output's report")
    p.add_argument("--cases", help="ingest output folder: heatmaps of a few full test images in the report")
    p.add_argument("--out", required=True)
    _add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("select_and_gate", aliases=["gate"],
                       help="step: select the best backbone on validation and decide its promotion")
    p.add_argument("--evaluation", action="append", required=True, help="evaluate output folder (repeatable)")
    p.add_argument("--model", action="append", required=True, help="train output folder (repeatable)")
    p.add_argument("--dataset", help="balance_split output folder: the champion is re-scored on its test split "
                                     "(without it the champion's recorded figure is used)")
    p.add_argument("--serving-root", required=True, help="model repository TF Serving reads (path or gs://)")
    p.add_argument("--out", required=True, help="decision folder (report.json, report.html)")
    p.add_argument("--selected-model", required=True, help="folder receiving the selected model")
    _add_config_args(p)
    p.set_defaults(func=cmd_select_and_gate)

    p = sub.add_parser("deploy", help="step: export a serving SavedModel and push a new version")
    p.add_argument("--model", required=True, help="train (or select_and_gate selected_model) output folder")
    p.add_argument("--decision", help="select_and_gate decision folder: its model record and evaluation are "
                                      "stored with the version (default: none)")
    p.add_argument("--serving-root", required=True)
    p.add_argument("--out", required=True, help="output folder (report.json)")
    p.add_argument("--model-name", help="default: deploy.model_name")
    p.add_argument("--wait-for-rest-url", help="TF Serving REST URL: wait for AVAILABLE, then check one prediction "
                                               "(default: deploy.wait_for_rest_url)")
    p.add_argument("--wait-timeout-s", type=int, help="default: deploy.wait_timeout_s")
    p.add_argument("--keep-versions", type=int, help="keep the last K complete versions, 0: all "
                                                     "(default: deploy.keep_versions)")
    _add_config_args(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("rollback", help="serve an earlier version again (re-published as the newest version)")
    p.add_argument("--serving-root", required=True, help="model repository TF Serving reads (path or gs://)")
    p.add_argument("--model-name", default="mammo")
    p.add_argument("--to-version", type=int, default=None, help="default: the version before the served one")
    p.add_argument("--wait-for-rest-url", help="TF Serving REST URL: wait for AVAILABLE, then check one prediction")
    p.add_argument("--wait-timeout-s", type=float, default=300)
    p.add_argument("--keep-versions", type=int, help="keep the last K complete versions, 0: all "
                                                     "(default: deploy.keep_versions)")
    _add_config_args(p)
    p.set_defaults(func=cmd_rollback)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mammo.components.runtime import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        code = args.func(args)
    except (ValueError, OSError, TimeoutError, RuntimeError) as exc:
        # a clear one-line error for users; the traceback with --verbose
        log.error("%s", exc, exc_info=args.verbose)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
