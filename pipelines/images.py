"""Build the pipeline's two images (``dockerfiles/``) under the names the compiled pipeline uses.

``mammo images build`` builds ``CPU_IMAGE`` and ``GPU_IMAGE`` of ``components/config.py`` (what
``mammo compile`` writes into every task), so a local run with ``--runner docker`` and a cluster
run use the same names. Builds use the host's network (``docker build --network host``: no bridge
network is needed) and the package index and CA bundle the host's pip uses, so they work behind a
TLS-intercepting proxy. ``local_base=True`` first makes the base image from Debian packages with
``debootstrap`` and ``docker import`` (tagged by a hash of its recipe and reused while that exists),
for machines that reach a package archive but no container registry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KINDS = ("cpu", "gpu")
DOCKERFILE = {"cpu": "dockerfiles/cpu.Dockerfile", "gpu": "dockerfiles/gpu.Dockerfile"}
#: where the builder stage finds an optional CA bundle (the Dockerfiles COPY it by a glob)
BUILD_CA = "dockerfiles/build-ca.pem"
#: the Debian base for --local-base: the suite of the public python:*-slim-bookworm base, python3
#: with venv (the Dockerfiles make a virtual environment), passwd (useradd) and CA certificates
LOCAL_BASE_SUITE = "bookworm"
LOCAL_BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
LOCAL_BASE_REPOSITORY = "mammo-local-base"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: bump when the recipe below changes in a way its inputs do not show
LOCAL_BASE_RECIPE = 1

START_DOCKERD = ("start it with `dockerd --bridge=none --iptables=false &` as root (no bridge network is "
                 "needed: builds use the host network, runs use none), or `sudo systemctl start docker`")


class DockerUnavailable(RuntimeError):
    """Docker is not installed, or its daemon does not answer."""


@dataclass
class Built:
    kind: str
    tag: str
    seconds: float
    base: str
    user: str


def docker_cli() -> str:
    """The docker client's path, or a DockerUnavailable that says how to install it."""
    path = shutil.which("docker")
    if not path:
        raise DockerUnavailable("docker is not installed (no `docker` on PATH): install it, e.g. "
                                "`apt-get install -y docker.io` on Debian/Ubuntu, then " + START_DOCKERD)
    return path


def check_daemon() -> str:
    """The daemon's version; a DockerUnavailable naming the reason and the fix when it does not answer."""
    proc = subprocess.run([docker_cli(), "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0 or not proc.stdout.strip():
        reason = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
        raise DockerUnavailable(f"the Docker daemon is not running or not reachable ({reason}); {START_DOCKERD}")
    return proc.stdout.strip()


def image_exists(tag: str) -> bool:
    return subprocess.run([docker_cli(), "image", "inspect", tag], capture_output=True).returncode == 0


def image_user(tag: str) -> str:
    """The image's configured user (``Config.User``), "" when it runs as root by default."""
    out = subprocess.run([docker_cli(), "image", "inspect", "--format", "{{.Config.User}}", tag],
                         capture_output=True, text=True, check=True).stdout
    return out.strip()


def is_root_user(user: str) -> bool:
    name = user.split(":")[0]
    return name in ("", "0", "root")


def image_names(tag: str | None = None) -> dict[str, str]:
    """{kind: image name}: components/config.py's names, or the same repositories with tag ``tag``."""
    from mammo.components.config import CPU_IMAGE, GPU_IMAGE

    names = {"cpu": CPU_IMAGE, "gpu": GPU_IMAGE}
    if tag:
        names = {k: _repository(v) + ":" + tag for k, v in names.items()}
    return names


def _repository(image: str) -> str:
    """``image`` without its tag (a registry port's colon is not a tag)."""
    name, sep, tag = image.rpartition(":")
    return name if sep and "/" not in tag else image


def find_context(start: Path | None = None) -> Path:
    """The repository root holding ``dockerfiles/`` (the build context), from ``start`` or this module."""
    candidates = [Path(start or Path.cwd()).resolve(), Path(__file__).resolve().parents[1]]
    for candidate in candidates:
        for folder in (candidate, *candidate.parents):
            if all((folder / f).is_file() for f in DOCKERFILE.values()):
                return folder
    raise FileNotFoundError("no dockerfiles/cpu.Dockerfile and gpu.Dockerfile above the current folder or the "
                            "installed package: run `mammo images build` inside a checkout of the repository")


# -- the host's pip settings, for the build ------------------------------------------------------


def pip_settings() -> dict[str, str]:
    """``{"cert": ..., "index-url": ...}`` as the host's pip has them (environment first, then its config)."""
    found: dict[str, str] = {}
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in proc.stdout.splitlines():  # e.g. global.cert='/etc/ssl/certs/ca-certificates.crt'
        key, _, value = line.partition("=")
        option = key.rpartition(".")[2]
        if option in ("cert", "index-url"):
            found.setdefault(option, value.strip().strip("'\""))
    for option, env in (("cert", "PIP_CERT"), ("index-url", "PIP_INDEX_URL")):
        if os.environ.get(env):
            found[option] = os.environ[env]
    return found


def build_args(settings: dict[str, str]) -> list[str]:
    """``--build-arg`` options for the host's index; a local (file://) index cannot be reached by a build."""
    index = settings.get("index-url", "")
    if index and not index.startswith("file:"):
        return ["--build-arg", f"PIP_INDEX_URL={index}"]
    return []


# -- the local base ------------------------------------------------------------------------------


def local_base_recipe(mirror: str) -> dict:
    """Everything the local base is made from; its hash names the image (cached by content)."""
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "debootstrap"], capture_output=True,
                             text=True).stdout.strip() if shutil.which("dpkg-query") else "unknown"
    return {"suite": LOCAL_BASE_SUITE, "variant": "minbase", "packages": sorted(LOCAL_BASE_PACKAGES),
            "mirror": mirror, "debootstrap": version, "recipe": LOCAL_BASE_RECIPE}


def local_base_tag(recipe: dict) -> str:
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{LOCAL_BASE_REPOSITORY}:{recipe['suite']}-{digest}"


def build_local_base(mirror: str | None = None, rebuild: bool = False) -> tuple[str, float]:
    """Make (or reuse) the Debian base image; returns its tag and the seconds it took."""
    mirror = mirror or os.environ.get("MAMMO_DEBIAN_MIRROR") or DEFAULT_MIRROR
    recipe = local_base_recipe(mirror)
    tag = local_base_tag(recipe)
    if image_exists(tag) and not rebuild:
        log.info("local base %s exists (same recipe): reused", tag)
        return tag, 0.0
    if not shutil.which("debootstrap"):
        raise DockerUnavailable("--local-base needs debootstrap: `apt-get install -y debootstrap`")
    if os.geteuid() != 0:
        raise RuntimeError("--local-base runs debootstrap, which needs root: run `mammo images build "
                              "--local-base` as root (or with sudo)")
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="mammo-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log.info("local base: debootstrap %s (%s) from %s", recipe["suite"], ", ".join(recipe["packages"]), mirror)
        _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(recipe["packages"]), recipe["suite"],
              str(rootfs), mirror])
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (rootfs / leftover).glob("*"):
                if f.is_file():
                    f.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
                   'CMD ["/bin/bash"]', f"LABEL org.opencontainers.image.title={LOCAL_BASE_REPOSITORY}",
                   f"LABEL io.mammo.base-recipe={json.dumps(recipe, sort_keys=True).replace(' ', '')}"]
        cmd = [docker_cli(), "import"] + [a for c in changes for a in ("--change", c)] + ["-", tag]
        imported = subprocess.run(cmd, stdin=tar.stdout, capture_output=True, text=True)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise RuntimeError(f"docker import of the local base failed: {imported.stderr.strip()}")
    seconds = time.time() - start
    log.info("local base %s made in %.0fs", tag, seconds)
    return tag, seconds


# -- the images ----------------------------------------------------------------------------------


def build_image(kind: str, tag: str, context: Path, base: str | None = None, settings: dict | None = None) -> Built:
    """``docker build`` one image with the host network and pip settings; checks its user is not root."""
    settings = pip_settings() if settings is None else settings
    cmd = [docker_cli(), "build", "--network", "host", "-f", DOCKERFILE[kind], "-t", tag, *build_args(settings)]
    if base:
        cmd += ["--build-arg", f"BASE_IMAGE={base}"]
    ca_target = context / BUILD_CA
    cert = settings.get("cert")
    start = time.time()
    try:
        if cert and Path(cert).is_file():
            shutil.copyfile(cert, ca_target)  # builder stage only; removed below
        log.info("building %s (%s) from %s", tag, DOCKERFILE[kind], base or "the Dockerfile's BASE_IMAGE")
        try:
            _run(cmd + ["."], cwd=context)
        except RuntimeError as exc:
            if base:
                raise
            raise RuntimeError(f"{exc}; where the public base image cannot be pulled, build with --local-base") from None
    finally:
        ca_target.unlink(missing_ok=True)
    user = image_user(tag)
    if is_root_user(user):
        raise RuntimeError(f"{tag} runs as root (USER {user!r}); the pipeline's images must not")
    return Built(kind, tag, round(time.time() - start, 1), base or "", user)


def build_images(kinds: tuple[str, ...] = KINDS, local_base: bool = False, tag: str | None = None,
                 context: Path | None = None, mirror: str | None = None) -> dict:
    """Build the images (optionally on a local base); returns what was built and the seconds taken."""
    check_daemon()
    context = find_context(context)
    names = image_names(tag)
    result: dict = {"images": {}, "base": None, "base_seconds": 0.0}
    base = None
    if local_base:
        base, result["base_seconds"] = build_local_base(mirror)
        result["base"] = base
    settings = pip_settings()
    for kind in kinds:
        built = build_image(kind, names[kind], context, base, settings)
        result["images"][kind] = built.__dict__
        log.info("built %s in %.0fs (user %s)", built.tag, built.seconds, built.user)
    return result


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    """Run a build command with its output streaming; a failure names the command."""
    proc = subprocess.run(cmd, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[:6])} ...` failed with exit code {proc.returncode} (output above)")
