"""`mammo images build` (pipelines/images.py): names, errors without Docker, the host's pip settings,
the local base's cache key; and, on the built images, what Kubeflow relies on (user, modules, CUDA build)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from mammo.pipelines import images

REPO = Path(__file__).resolve().parents[1]


def _fake_docker(tmp_path: Path, script: str) -> str:
    """A `docker` on PATH that runs ``script`` (bash): the daemon's answers without a daemon."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    docker = bindir / "docker"
    docker.write_text("#!/bin/bash\n" + script)
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    return f"{bindir}:/usr/bin:/bin"


def test_image_names_are_the_configured_ones_and_tag_replaces_only_the_tag():
    from mammo.components.config import CPU_IMAGE, GPU_IMAGE

    assert images.image_names() == {"cpu": CPU_IMAGE, "gpu": GPU_IMAGE}
    tagged = images.image_names("dev")
    assert tagged["cpu"] == CPU_IMAGE.rsplit(":", 1)[0] + ":dev"
    assert images._repository("localhost:5000/mammo:0.1.0") == "localhost:5000/mammo"
    assert images._repository("localhost:5000/mammo") == "localhost:5000/mammo"


def test_no_docker_on_path_says_how_to_install_and_start_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(images.DockerUnavailable, match=r"apt-get install -y docker\.io.*dockerd --bridge=none"):
        images.build_images(("cpu",))


def test_daemon_not_running_is_named_with_the_command_that_starts_it(monkeypatch, tmp_path):
    path = _fake_docker(tmp_path, 'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2\n'
                                  "exit 1\n")
    monkeypatch.setenv("PATH", path)
    with pytest.raises(images.DockerUnavailable) as err:
        images.check_daemon()
    assert "Cannot connect to the Docker daemon" in str(err.value)
    assert "dockerd --bridge=none --iptables=false" in str(err.value)


def test_build_uses_host_network_the_configured_name_and_hands_the_ca_bundle_to_the_builder_only(
        monkeypatch, tmp_path):
    """The docker build command line, recorded by a fake docker; the CA copy is gone afterwards."""
    record = tmp_path / "calls"
    seen_ca = tmp_path / "ca-seen"
    path = _fake_docker(tmp_path, f'echo "$@" >> {record}\n'
                                  f'if [ "$1" = build ] && [ -f dockerfiles/build-ca.pem ]; then cp dockerfiles/build-ca.pem {seen_ca}; fi\n'
                                  'if [ "$1" = image ]; then echo "1000:1000"; fi\n')
    monkeypatch.setenv("PATH", path)
    context = tmp_path / "repo"
    (context / "dockerfiles").mkdir(parents=True)
    for f in images.DOCKERFILE.values():
        (context / f).write_text("FROM scratch\n")
    ca = tmp_path / "corp-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n")
    settings = {"cert": str(ca), "index-url": "https://pypi.example.org/simple"}
    built = images.build_image("gpu", "example/mammo-gpu:1", context, base="mammo-local-base:x", settings=settings)
    build = [line for line in record.read_text().splitlines() if line.startswith("build")][0]
    assert build.split() == ["build", "--network", "host", "-f", "dockerfiles/gpu.Dockerfile", "-t",
                             "example/mammo-gpu:1", "--build-arg", "PIP_INDEX_URL=https://pypi.example.org/simple",
                             "--build-arg", "BASE_IMAGE=mammo-local-base:x", "."]
    assert seen_ca.read_text() == ca.read_text(), "the build saw the host's CA bundle"
    assert not (context / images.BUILD_CA).exists(), "the CA copy is removed after the build"
    assert built.user == "1000:1000"


def test_an_image_that_runs_as_root_is_refused(monkeypatch, tmp_path):
    path = _fake_docker(tmp_path, 'if [ "$1" = image ]; then echo ""; fi\n')
    monkeypatch.setenv("PATH", path)
    for f in images.DOCKERFILE.values():
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).write_text("FROM scratch\n")
    with pytest.raises(RuntimeError, match="runs as root"):
        images.build_image("cpu", "example/mammo:1", tmp_path, settings={})


def test_pip_settings_follow_the_environment_and_skip_a_local_index(monkeypatch, tmp_path):
    monkeypatch.setenv("PIP_CERT", "/etc/custom-ca.pem")
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example.org/simple")
    assert images.pip_settings() == {"cert": "/etc/custom-ca.pem", "index-url": "https://mirror.example.org/simple"}
    assert images.build_args({"index-url": "file:///opt/pypi/simple"}) == []
    assert images.build_args({}) == []


def test_local_base_is_named_by_its_recipe():
    recipe = images.local_base_recipe("http://deb.debian.org/debian")
    assert set(images.LOCAL_BASE_PACKAGES) <= set(recipe["packages"]) and recipe["suite"] == "bookworm"
    tag = images.local_base_tag(recipe)
    assert tag == images.local_base_tag(dict(recipe)) and tag.startswith("mammo-local-base:bookworm-")
    assert images.local_base_tag({**recipe, "mirror": "http://other.example/debian"}) != tag


def test_the_build_context_is_found_from_a_subfolder_of_the_checkout(tmp_path, monkeypatch):
    assert images.find_context(REPO / "components") == REPO
    monkeypatch.setattr(images, "__file__", str(tmp_path / "x" / "images.py"))
    with pytest.raises(FileNotFoundError, match="inside a checkout"):
        images.find_context(tmp_path)


# -- the built images (CI builds them first) ------------------------------------------------------


def _in_image(image: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "run", "--rm", "--network", "none", image, *cmd], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.container
@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_built_image_runs_as_uid_1000_and_imports_every_module(container_images, kind):
    image = container_images[kind]
    assert not images.is_root_user(images.image_user(image))
    ident = _in_image(image, "id", "-u")
    assert ident.returncode == 0 and ident.stdout.strip() == "1000", ident.stderr
    check = _in_image(image, "python", "/opt/mammo/check_image.py", kind)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "imported" in check.stdout
    if kind == "gpu":
        assert "built with CUDA" in check.stdout
    # no network in the containers the pipeline runs in
    net = _in_image(image, "python", "-c", "import socket; print(len(socket.if_nameindex()))")
    assert net.returncode == 0 and net.stdout.strip() == "1", "only the loopback interface"
