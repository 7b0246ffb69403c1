"""Build-time checks of a mammo image, run as the image's user by the last step of each Dockerfile.

Imports every module of the installed ``mammo`` package (a module missing from the wheel, or a
dependency missing from the lock, fails the build rather than the first cluster run), starts the
CLI, and refuses to run as root. ``gpu`` also checks that TensorFlow imports at the locked version
and was built with CUDA (the image is built on machines without a GPU, so no device is required).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys


def module_names(distribution: str = "mammo") -> list[str]:
    """Every module the installed distribution ships, from its file list (RECORD)."""
    from importlib.metadata import files

    names = []
    for path in files(distribution) or []:
        if path.suffix == ".py" and ".dist-info" not in str(path) and not str(path).startswith(".."):
            parts = list(path.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return sorted(names)


def import_all(names: list[str]) -> None:
    """Import each module; fail naming every one that does not import, and why."""
    failures = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - collect all, report all
            failures.append(f"{name}: {exc!r}")
    if failures:
        raise SystemExit("modules that do not import in this image:\n  " + "\n  ".join(failures))


def cuda_requirements_missing() -> list[str]:
    """The ``tensorflow[and-cuda]`` requirements that are not installed at an allowed version."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    missing = []
    for text in requires("tensorflow") or []:
        req = Requirement(text)
        if not req.marker or not req.marker.evaluate({"extra": "and-cuda"}) or req.marker.evaluate({"extra": ""}):
            continue  # not part of the and-cuda extra
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            missing.append(f"{req} (not installed)")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            missing.append(f"{req} (installed {installed})")
    return missing


def main(kind: str) -> int:
    if os.getuid() == 0:
        raise SystemExit("the image's user is root; the pipeline runs as UID 1000")
    names = module_names()
    if len(names) < 10:
        raise SystemExit(f"the installed mammo distribution lists only {names}: not a wheel install?")
    import_all(names)
    subprocess.run(["mammo", "--help"], check=True, stdout=subprocess.DEVNULL)
    print(f"imported {len(names)} mammo modules as uid {os.getuid()}")
    if kind == "gpu":
        from importlib.metadata import version

        import tensorflow as tf

        if not tf.test.is_built_with_cuda():
            raise SystemExit(f"TensorFlow {tf.__version__} in this image was not built with CUDA")
        if tf.__version__ != version("tensorflow"):
            raise SystemExit(f"tensorflow imports as {tf.__version__}, installed {version('tensorflow')}")
        missing = cuda_requirements_missing()
        if missing:
            raise SystemExit("tensorflow[and-cuda] requirements not met: " + ", ".join(missing))
        print(f"TensorFlow {tf.__version__} built with CUDA {tf.sysconfig.get_build_info().get('cuda_version')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cpu"))
