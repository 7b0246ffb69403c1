"""The one place for mammo's configuration.

A :class:`Config` is a tree of small typed dataclasses. Two profiles ship with the code:

* ``paper``: the settings of Tiryaki (2023) and its published notebooks (331 px patches, the five
  backbones, the three-stage schedule, AUC threshold 0.90).
* ``demo``: the same pipeline shrunk so that it runs end to end on a 2-core laptop in minutes
  (small patches, one fast backbone trained from scratch, short stages, a low AUC threshold).

Any field can be overridden with ``key=value`` strings (``train.stage1_epochs=1``,
``train.backbones=resnet50,xception``); values are parsed by the field's type. The pipeline receives
the whole tree as one ``config`` dict parameter (plus ``backbones`` for its ``ParallelFor``), so a
run submitted from the KFP UI can change any setting.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from mammo.components.config_rules import (Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                                           Range, Switch, build_section, check_values, set_override, split_override)

#: The five classes, in the order of the paper's class folders (calc_ben, calc_mal, mass_ben,
#: mass_mal, normal). The model's output index i is CLASS_NAMES[i].
CLASS_NAMES: tuple[str, ...] = (
    "calc_benign",
    "calc_malignant",
    "mass_benign",
    "mass_malignant",
    "normal",
)
#: The paper's abbreviations of the classes (BC, MC, BM, MM, N), keyed by ``CLASS_NAMES``.
CLASS_ABBREVIATIONS: dict[str, str] = dict(zip(CLASS_NAMES, ("BC", "MC", "BM", "MM", "N")))


@dataclass
class IngestConfig:
    """How raw CBIS-DDSM / DDSM normals are read."""

    #: share of normal patients assigned to the test split (deterministic by patient id hash)
    normal_test_fraction: Fraction = 0.2
    #: the ingest step fails if more than this share of the rows of any input is rejected
    max_reject_fraction: Fraction = 0.05
    #: concurrent image-header reads on gs:// (each one small ranged request; the GCS client keeps
    #: 10 pooled connections, so more threads gain little)
    io_workers: PositiveInt = 10
    #: rows that no folder name, metadata.csv or dicom_info.csv resolves are looked up by the
    #: Study/Series UIDs in the headers of the DICOM files no other row claimed
    resolve_by_header: bool = True


@dataclass
class ValidateConfig:
    """Data validation (great-expectations suite over ``cases``)."""

    #: every class needs at least this many cases (abnormalities / normal images)
    min_per_class: NonNegativeInt = 100
    #: bounds of a plausible image side in pixels (header check; CBIS-DDSM full images ~3000-5500)
    min_image_side: PositiveInt = 64
    max_image_side: PositiveInt = 12000
    #: an 8-bit patch is near-black when its 99th-percentile pixel is at most this (a 12-bit image
    #: scaled as 16-bit, or an 8-bit file scaled as 12-bit, peaks near 16)
    dark_patch_p99: Annotated[int, Range(0, 255)] = 32
    #: an 8-bit patch is saturated when its 1st-percentile pixel is at least this
    saturated_patch_p01: Annotated[int, Range(0, 255)] = 250
    #: a class or source fails when more than this share of its patches is near-black or saturated
    max_bad_patch_fraction: Fraction = 0.1

    def __post_init__(self) -> None:
        if self.min_image_side > self.max_image_side:
            raise ValueError(f"config key 'validate.min_image_side' ({self.min_image_side}) must not exceed "
                             f"validate.max_image_side ({self.max_image_side})")


@dataclass
class PatchConfig:
    """Patch extraction (ROI-centred abnormal crops, tissue crops from normal CC views)."""

    #: side of the stored 8-bit patches in pixels (the paper: 331)
    image_size: PositiveInt = 331
    #: "unbiased": normal crop sides drawn from the lesion crops' sides (mm, per split, seeded) and
    #: lesion windows shifted inside the image (zero padding only where the image is smaller than
    #: the window, and recorded); "paper": the paper's protocol (one fixed normal side, lesion windows
    #: centred and zero-padded), whose crop side and padding give the class away
    protocol: Literal["unbiased", "paper"] = "unbiased"
    #: context around the lesion: the square crop side is max(bbox h, w) * (1 + context_margin)
    context_margin: NonNegativeFloat = 1.0
    #: smallest crop side in mm (tiny calcification ROIs still get some context); 12.8 mm = 256 px
    #: at the default 0.05 mm spacing
    min_crop_mm: PositiveFloat = 12.8
    #: normal patches cut from each normal CC image
    normal_patches_per_image: NonNegativeInt = 2
    #: crop side of normal patches in mm under the ``paper`` protocol, and the fallback side under
    #: ``unbiased`` when a shard has no lesion crop; 30 mm = 600 px at 0.05 mm
    normal_crop_mm: PositiveFloat = 30.0
    #: pixel spacing (mm) of images whose ``cases`` row and header give none, as "source:mm" entries
    #: ("all:mm" for every source). CBIS-DDSM's DICOMs carry no spacing; DDSM's digitizers scanned at
    #: 42-50 um, and 0.05 mm reproduces the paper's pixel sizes (600 / 256 px)
    default_pixel_spacing_mm: list[str] = field(default_factory=lambda: ["cbis-ddsm:0.05", "ddsm-normal:0.05",
                                                                         "all:0.05"])
    #: largest image (rows x columns, from the header) that is decoded; larger ones are refused with
    #: the file named (full-field mammograms are 10-40 MP)
    max_pixels: PositiveInt = 150_000_000
    #: a normal patch is kept only if at least this share of it lies inside the breast mask
    #: (holes filled, so fat counts as breast); 1.0 = no background at all
    min_tissue_fraction: Fraction = 1.0
    #: a ROI mask whose rows and columns each differ from the full image's by at most this share
    #: is rescaled to the image (and recorded as such); beyond it the cropped image is the fallback
    mask_rescale_tolerance: Fraction = 0.02
    #: records per TFRecord file: 1000 PNG patches of 331 px are at most ~110 MB (the raw 8-bit
    #: size; smooth synthetic patches ~33 MB), i.e. files of tens of MB to ~100 MB that stream well
    #: from GCS, and a few files per extraction shard
    records_per_shard: PositiveInt = 1000

    def __post_init__(self) -> None:
        self.spacing_defaults()  # a malformed entry fails at config time

    def spacing_defaults(self) -> dict[str, float]:
        """``default_pixel_spacing_mm`` as ``{source: mm}`` (key ``all`` for any other source)."""
        out: dict[str, float] = {}
        for entry in self.default_pixel_spacing_mm:
            name, sep, value = str(entry).partition(":")
            try:
                mm = float(value) if sep else float("nan")
            except ValueError:
                mm = float("nan")
            if not name.strip() or not 0.0 < mm < 10.0:
                raise ValueError(f"patches.default_pixel_spacing_mm entry {entry!r} is not 'source:mm' with mm "
                                 "in (0, 10) (e.g. 'cbis-ddsm:0.05' or 'all:0.05')")
            out[name.strip()] = mm
        return out


@dataclass
class BalanceConfig:
    """Class balancing and the train / validation / test split."""

    #: undersample (the paper) | oversample | class_weights | none
    mode: Literal["undersample", "oversample", "class_weights", "none"] = "undersample"
    #: share of the CBIS-DDSM training patients used for validation (grouped by patient)
    validation_fraction: Fraction = 0.2


@dataclass
class TrainConfig:
    """Transfer learning with the paper's three-stage fine-tuning schedule."""

    #: registry names (see mammo.components.train.backbones) or keras:<Application> for any
    #: keras.applications model (e.g. keras:MobileNet)
    backbones: list[str] = field(
        default_factory=lambda: ["resnet50", "xception", "nasnetmobile", "nasnetlarge", "efficientnetb7"]
    )
    #: keyword arguments of the keras:<Application> backbones: "<argument>=<value>" (every keras:
    #: backbone) or "<Application>.<argument>=<value>" (one), values as Python literals
    #: (e.g. "MobileNet.alpha=0.5")
    backbone_kwargs: list[str] = field(default_factory=list)
    #: "imagenet" (downloads Keras' weights), "none" (random init) or a weights file (path or gs://)
    weights: str = "imagenet"
    #: where ImageNet downloads (``<dir>/models/``) and gs:// weights files are cached ("" = ~/.keras)
    weights_cache_dir: str = ""
    #: "backbone" (each backbone's own preprocessing) or "rescale" (x / 255, the paper's notebooks)
    preprocessing: Literal["backbone", "rescale"] = "backbone"
    #: model input side; 0 = the backbone's paper default (224 or 331)
    input_size: NonNegativeInt = 0
    #: batch size per accelerator; 0 = the backbone's paper default (8, 6 or 2). With several GPUs
    #: the global batch is this times the replica count
    batch_size: NonNegativeInt = 0
    stage1_epochs: NonNegativeInt = 3
    stage1_lr: PositiveFloat = 1e-3
    stage2_epochs: NonNegativeInt = 10
    stage2_lr: PositiveFloat = 1e-4
    #: share of backbone layers unfrozen in stage 2 when the backbone has no paper-specific count
    stage2_unfreeze_fraction: Fraction = 0.33
    stage3_max_epochs: NonNegativeInt = 150
    stage3_lr: PositiveFloat = 1e-5
    min_lr: NonNegativeFloat = 1e-8
    early_stopping_patience: NonNegativeInt = 10
    plateau_patience: NonNegativeInt = 10
    stage3_plateau_patience: NonNegativeInt = 5
    min_delta: NonNegativeFloat = 1e-4
    #: head: GAP -> Dense(head_units) -> Dropout -> Dense(head_units2 or backbone default) -> softmax
    head_units: PositiveInt = 512
    head_units2: NonNegativeInt = 0
    dropout: Fraction = 0.5
    # augmentation (no brightness change: intensity is diagnostic)
    shift: NonNegativeFloat = 0.2
    zoom: NonNegativeFloat = 0.2
    shear: NonNegativeFloat = 0.2
    rotation_degrees: NonNegativeFloat = 90.0
    flips: bool = True
    fill_mode: Literal["reflect", "wrap", "constant", "nearest"] = "wrap"
    #: limit batches per epoch (0 = whole dataset); for tests and smoke runs
    steps_per_epoch: NonNegativeInt = 0
    #: mixed_float16 (softmax in float32) and XLA: "auto" (on when a GPU is present), "on", "off"
    mixed_precision: Switch = "auto"
    jit_compile: Switch = "auto"
    #: run every step eagerly (no tf.function tracing, no XLA): slow per step, but a one-step smoke
    #: run of a large backbone skips minutes of graph building (the CI tests); for debugging too
    run_eagerly: bool = False
    #: several GPUs in the pod: data-parallel training with tf.distribute.MirroredStrategy
    multi_gpu: bool = True
    #: shuffle buffer of the training set (examples); deterministic with the config's seed
    shuffle_buffer: NonNegativeInt = 4096
    #: per-epoch checkpoints for resuming after a pod restart: "" = ``<model output>/checkpoints``,
    #: else a durable folder or gs:// prefix (a per-task subfolder is added by the KFP component)
    checkpoint_dir: str = ""
    #: continue from the checkpoints found there (stage, epoch, optimizer, callbacks) instead of restarting
    resume: bool = True
    #: batch-norm momentum override for the backbone (0 = keep the backbone's own, e.g. 0.99 or
    #: 0.999). Training from scratch on little data needs a lower value (the demo uses 0.9) or the
    #: moving statistics lag far behind the weights and validation predictions collapse to one class.
    bn_momentum: Fraction = 0.0

    def __post_init__(self) -> None:
        # a misspelt backbone or a malformed backbone argument fails at config time, not in the training pod
        from mammo.components.train.backbones import check_backbone_names, parse_backbone_kwargs

        check_backbone_names(self.backbones)
        parse_backbone_kwargs(self.backbone_kwargs, self.backbones)


@dataclass
class GateConfig:
    """Model selection and the promotion gate."""

    #: metric compared against the threshold and the champion (test set)
    metric: Literal["macro_auc", "macro_f1", "accuracy"] = "macro_auc"
    auc_threshold: Fraction = 0.90
    #: the challenger may be at most this much worse than the served champion
    max_auc_drop: Fraction = 0.01
    #: optional per-class test AUC floors, entries "class:floor" (e.g. "calc_malignant:0.85");
    #: "all:0.8" sets a floor for every class (a named class overrides it)
    class_auc_floors: list[str] = field(default_factory=list)
    #: promote even if a check fails; the decision, the run summary and the model metadata say so
    force: bool = False
    #: refuse a model that predicts one class for more than this share of the test patches (collapse)
    max_single_class_fraction: Fraction = 0.95
    #: paired patient-level bootstrap resamples of the challenger-minus-champion difference on the
    #: current test set (the champion's SavedModel is re-scored); 0 = compare with its recorded figure
    paired_resamples: NonNegativeInt = 1000
    #: the gate report warns when the model's test macro AUC is not above the metadata-only shortcut
    #: baseline's by at least this much
    shortcut_margin: Fraction = 0.05

    def __post_init__(self) -> None:
        self.class_floors()  # a typo in a floor fails at config time, not after training

    def class_floors(self) -> dict[str, float]:
        """``class_auc_floors`` as ``{class name: floor}`` (``all`` expanded to every class)."""
        floors: dict[str, float] = {}
        named: dict[str, float] = {}
        for entry in self.class_auc_floors:
            name, sep, value = str(entry).partition(":")
            name = name.strip()
            try:
                floor = float(value) if sep else float("nan")
            except ValueError:
                floor = float("nan")
            if not 0.0 <= floor <= 1.0 or (name != "all" and name not in CLASS_NAMES):
                raise ValueError(f"gate.class_auc_floors entry {entry!r} is not 'class:floor' with class in "
                                 f"{list(CLASS_NAMES) + ['all']} and floor in [0, 1]")
            if name == "all":
                floors = dict.fromkeys(CLASS_NAMES, floor)
            else:
                named[name] = floor
        return {**floors, **named}


@dataclass
class EvaluateConfig:
    """Test-set evaluation: uncertainty, calibration and operating points (the gate reads the results)."""

    #: patient-level bootstrap resamples for the confidence intervals (0 = no intervals)
    bootstrap_resamples: NonNegativeInt = 1000
    #: confidence level of the bootstrap intervals
    ci_level: Fraction = 0.95
    #: each class's sensitivity is reported at these specificities
    specificities: list[Fraction] = field(default_factory=lambda: [0.90, 0.95])
    #: equal-width confidence bins of the expected calibration error and the reliability plot
    calibration_bins: PositiveInt = 15
    #: fit a softmax temperature on validation and store it with the selected model; the gate's
    #: metrics stay those of the raw model outputs (what deploy serves unless it applies the temperature)
    temperature_scaling: bool = True
    #: shortcut audit: a logistic regression on patch metadata only (crop side, padding, scanner, bit
    #: depth, source), patient-grouped cross-validation with this many folds (0 = no audit)
    shortcut_folds: NonNegativeInt = 5
    #: Grad-CAM overlays in the report: test patches per class and outcome (correct / wrong)
    gradcam_per_class: NonNegativeInt = 2
    #: sliding-window heatmaps of full test images in the report: images per class (0 = none)
    heatmap_images_per_class: NonNegativeInt = 1


@dataclass
class DeployConfig:
    """Where and how a promoted model is pushed."""

    model_name: str = "mammo"
    #: TF Serving REST base URL to poll until the new version is AVAILABLE ("" = do not wait)
    wait_for_rest_url: str = ""
    wait_timeout_s: NonNegativeInt = 300
    #: once AVAILABLE, send one prediction and compare it with the local SavedModel's answer
    check_prediction: bool = True
    #: complete versions kept in the model repository after a successful deploy (0 = keep all)
    keep_versions: NonNegativeInt = 5
    #: pixel budget (rows x columns, read from the header before decoding) of an image sent to the
    #: serving signatures and read by ``mammo predict``; full-field mammograms are 10-40 MP
    max_image_pixels: PositiveInt = 64_000_000
    #: seconds a TF Serving request (REST / gRPC) and a gs:// image read by ``mammo predict`` may take
    request_timeout_s: PositiveFloat = 30.0
    #: whole-image heatmaps: window step as a share of the window side (windows are the patches'
    #: physical size, ``patches.normal_crop_mm``, unless the model records its own ``patch_mm``)
    heatmap_stride: PositiveFloat = 0.5
    #: windows per request / per local call
    heatmap_batch: PositiveInt = 32
    #: a window is scored when at least this share of it lies in the breast mask
    heatmap_min_breast_fraction: Fraction = 0.5
    #: regions listed per image (highest probability, distinct places)
    heatmap_top_regions: NonNegativeInt = 5


@dataclass
class ClusterConfig:
    """How the compiled pipeline runs on Kubernetes (read by ``mammo compile / submit / schedule``).

    KFP fixes task resources, scheduling, retries and loop parallelism when the pipeline is
    compiled, so these settings are taken from the profile at compile time (``mammo compile``,
    and ``mammo submit / schedule``, which compile with the same ``--set`` overrides: GPU type and
    count are chosen there). They are not part of the run's ``config`` parameter (see
    :func:`run_config_dict`). ``pipeline_root`` and ``service_account`` are set on each submitted
    run. Credentials never live here: name a Kubernetes secret, or use workload identity through
    ``service_account``.

    Requests leave headroom below the node they are meant for (:func:`node_fit`): a node's
    allocatable CPU and memory are below its capacity (kubelet and system reservations, eviction
    threshold) and daemonsets take their share, so a pod requests at most ``0.85 * vCPU - 0.5``
    cores and ``0.8 * GiB - 1`` GiB of the node. The defaults fit 8 vCPU / 32 GiB nodes (data,
    training, evaluation; e.g. g2-standard-8 with one L4, n2-standard-8) and 4 vCPU / 16 GiB
    nodes (gate, deploy).
    """

    #: CPU / memory requests (Kubernetes quantities) per step group; memory limit = request
    data_cpu: str = "6"  # ingest, validate_data, extract_patches, balance_split
    data_memory: str = "24Gi"
    train_cpu: str = "6"
    train_memory: str = "24Gi"
    eval_cpu: str = "6"
    eval_memory: str = "24Gi"
    gate_cpu: str = "2"  # select_and_gate, deploy (exports the SavedModel)
    gate_memory: str = "8Gi"
    #: GPUs per training task (0 = train on CPU, e.g. a kind cluster without GPUs)
    train_gpus: NonNegativeInt = 1
    accelerator: str = "nvidia.com/gpu"
    #: GPU type: training pods get the node selector gpu_node_label=gpu_type ("" = any GPU node);
    #: e.g. cloud.google.com/gke-accelerator=nvidia-l4 or nvidia.com/gpu.product=NVIDIA-A100-SXM4-40GB
    gpu_node_label: str = "nvidia.com/gpu.product"
    gpu_type: str = ""
    #: taint key that training pods tolerate (effect NoSchedule; GPU node pools are usually tainted)
    gpu_toleration: str = "nvidia.com/gpu"
    #: KFP retries of extract_patches, balance_split, evaluate and select_and_gate (exponential
    #: backoff). ingest and validate_data are not retried by KFP: their failures are deterministic
    #: (reject fraction, critical expectations; exit code ``runtime.EXIT_DATA_REJECTED``) and their
    #: transient storage errors are retried in-process (components/storage.py)
    retries: NonNegativeInt = 3
    retry_backoff: str = "30s"
    retry_backoff_factor: PositiveFloat = 2.0
    retry_backoff_max: str = "600s"
    #: retries of a training task (e.g. on preemptible GPU nodes); deploy is never retried
    train_retries: NonNegativeInt = 0
    #: training pods are killed after this long (activeDeadlineSeconds; 0 = no limit)
    train_timeout_s: NonNegativeInt = 86400
    #: concurrent patch-extraction shards / training tasks (0 = unlimited)
    extract_parallelism: NonNegativeInt = 16
    train_parallelism: NonNegativeInt = 5
    #: where KFP stores artifacts (gs://bucket/prefix, s3://..., minio://...; "" = the cluster's default)
    pipeline_root: str = ""
    #: Kubernetes service account of the run's pods ("" = the cluster's default, pipeline-runner)
    service_account: str = ""
    #: a Kubernetes secret holding a GCP key file ``key.json``, mounted in every step with
    #: GOOGLE_APPLICATION_CREDENTIALS ("" = workload identity or node credentials)
    gcp_credentials_secret: str = ""
    #: PersistentVolumeClaims (in the run's namespace) mounted into the steps: the data claim into
    #: ingest, validate_data and extract_patches; the models claim (serving root) into
    #: select_and_gate and deploy ("" = none: data and models are gs:// URIs)
    data_pvc: str = ""
    data_mount: str = "/data"
    models_pvc: str = ""
    models_mount: str = "/models"


@dataclass
class Config:
    seed: int = 1234
    ingest: IngestConfig = field(default_factory=IngestConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        check_values(self)

    # -- conversions ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Build a config from a (possibly partial) nested dict; unknown keys are errors."""
        return build_section(cls, data, prefix="")

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> "Config":
        """Return a copy with ``section.field=value`` overrides applied."""
        data = self.to_dict()
        items = overrides.items() if isinstance(overrides, dict) else (split_override(o) for o in overrides)
        for key, raw in items:
            set_override(data, key, raw, type(self))
        return Config.from_dict(data)


# -- profiles ----------------------------------------------------------------------------------


def paper_config() -> Config:
    """The settings of the paper (section 4 of ARCHITECTURE.md)."""
    return Config()


def demo_config() -> Config:
    """A small, fast profile for laptops and CI: same steps, tiny images, one backbone from scratch."""
    return paper_config().with_overrides(
        {
            "patches.image_size": 64,
            "patches.min_crop_mm": 2.4,
            "patches.normal_crop_mm": 4.8,
            "patches.normal_patches_per_image": 2,
            "patches.min_tissue_fraction": 0.98,
            "train.backbones": ["mobilenetv3small"],
            "train.weights": "none",
            "train.input_size": 64,
            "train.batch_size": 16,
            # from scratch, stages 1-2 (frozen random features) teach little: keep them short
            "train.stage1_epochs": 1,
            "train.stage1_lr": 3e-3,
            "train.stage2_epochs": 4,
            "train.stage2_lr": 3e-3,
            "train.stage3_max_epochs": 25,
            "train.stage3_lr": 1e-3,
            "train.early_stopping_patience": 6,
            "train.plateau_patience": 3,
            "train.stage3_plateau_patience": 3,
            "train.bn_momentum": 0.9,
            "validate.min_per_class": 5,
            "gate.auc_threshold": 0.75,
            # a laptop-sized Kubernetes node (kind, minikube) without GPUs: the compiled demo
            # pipeline requests no accelerator and fits a 4 vCPU / 8 GiB node
            "cluster.train_gpus": 0,
            "cluster.data_cpu": "1",
            "cluster.data_memory": "2Gi",
            "cluster.train_cpu": "2",
            "cluster.train_memory": "4Gi",
            "cluster.eval_cpu": "1",
            "cluster.eval_memory": "3Gi",
            "cluster.gate_cpu": "500m",
            "cluster.gate_memory": "3Gi",
            "cluster.extract_parallelism": 2,
            "cluster.train_parallelism": 1,
        }
    )


PROFILES = {"paper": paper_config, "demo": demo_config}


# -- the run form: flat pipeline parameters over the run's config ---------------------------------

#: The settings users change per run, shown as their own typed pipeline parameters in the KFP UI
#: (name -> config key). Each is set ONLY through its parameter: the run's ``config`` parameter
#: holds neither these keys nor the compile-time ``cluster`` section (:func:`run_config_dict`),
#: and :func:`apply_run_parameters` rejects a config that sets one of them.
RUN_PARAMETERS: dict[str, str] = {
    "backbones": "train.backbones",
    "auc_threshold": "gate.auc_threshold",
    "max_auc_drop": "gate.max_auc_drop",
    "balance_mode": "balance.mode",
    "image_size": "patches.image_size",
    "weights": "train.weights",
}


def _get_path(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def run_parameter_values(cfg: Config) -> dict[str, Any]:
    """The flat run parameters' values in ``cfg`` (``{"auc_threshold": 0.9, ...}``)."""
    data = cfg.to_dict()
    return {name: _get_path(data, key) for name, key in RUN_PARAMETERS.items()}


def run_config_dict(cfg: Config) -> dict[str, Any]:
    """``cfg`` as the pipeline's ``config`` parameter: without ``cluster`` (compile-time) and
    without the keys of :data:`RUN_PARAMETERS` (their own parameters)."""
    data = cfg.to_dict()
    data.pop("cluster")
    for key in RUN_PARAMETERS.values():
        section, leaf = key.split(".")
        data[section].pop(leaf)
    return data


def apply_run_parameters(config: dict[str, Any], params: dict[str, Any]) -> Config:
    """The run's whole :class:`Config`: ``config`` (partial) with the flat ``params`` applied.

    A ``config`` that sets a flat parameter's key or any ``cluster`` key is an error naming the
    parameter to use instead, so each setting has one place.
    """
    data = json.loads(json.dumps(config))  # a deep copy of plain JSON
    if data.get("cluster"):
        raise ValueError(f"config sets cluster.{sorted(data['cluster'])[0]}: cluster settings are compile-time "
                         "(mammo compile / submit --set cluster.KEY=VALUE), not run parameters")
    data.pop("cluster", None)
    for name, key in RUN_PARAMETERS.items():
        section, leaf = key.split(".")
        if leaf in (data.get(section) or {}):
            raise ValueError(f"config sets {key}: use the pipeline parameter {name!r} instead")
    unknown = sorted(set(params) - set(RUN_PARAMETERS))
    if unknown:
        raise ValueError(f"unknown run parameter(s) {unknown}; known: {sorted(RUN_PARAMETERS)}")
    cfg = Config.from_dict(data)
    return cfg.with_overrides({RUN_PARAMETERS[name]: value for name, value in params.items()})


def node_fit(vcpu: float, memory_gib: float) -> tuple[float, float]:
    """(cores, GiB) a single pod may request on a node of ``vcpu`` / ``memory_gib`` capacity.

    Allocatable is capacity minus the kubelet's and the system's reservations and the eviction
    threshold (GKE: ~0.1-0.2 cores and ~3.5 GiB on 8 vCPU / 32 GiB; EKS and AKS similar), and
    daemonsets (logging, metrics, the GPU device plugin) take ~0.3 cores and ~0.5 GiB more:
    ``0.85 * vCPU - 0.5`` cores and ``0.8 * GiB - 1`` GiB stay below both on 4-96 vCPU nodes.
    """
    return 0.85 * vcpu - 0.5, 0.8 * memory_gib - 1.0


def load_config(profile: str = "paper", path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Profile defaults, then a YAML/JSON file of (partial) settings, then ``key=value`` overrides."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    cfg = PROFILES[profile]()
    if path:
        text = Path(path).read_text()
        try:
            data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text) or {}
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"config file {path}: not valid {'JSON' if str(path).endswith('.json') else 'YAML'}: "
                             f"{exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {path}: expected a mapping of sections (train: ..., patches: ...), "
                             f"got {type(data).__name__}")
        try:
            cfg = cfg.with_overrides(dict(_flatten(data)))
        except ValueError as exc:
            raise ValueError(f"config file {path}: {exc}") from None
    if overrides:
        cfg = cfg.with_overrides(overrides)
    return cfg


def _flatten(data: dict[str, Any], prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + key + ".")
        else:
            yield prefix + key, value


# -- images ------------------------------------------------------------------------------------
# The container images the compiled pipeline runs in (built from dockerfiles/); override at compile
# time with MAMMO_CPU_IMAGE / MAMMO_GPU_IMAGE when you push them to your own registry.
import os as _os

CPU_IMAGE: str = _os.environ.get("MAMMO_CPU_IMAGE", "ghcr.io/mammo-project/mammo:0.1.0")
GPU_IMAGE: str = _os.environ.get("MAMMO_GPU_IMAGE", "ghcr.io/mammo-project/mammo-gpu:0.1.0")
