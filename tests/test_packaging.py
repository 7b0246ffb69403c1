"""The wheel the images install holds every module of the source tree (packages are discovered, not listed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOTS = {"components": "mammo.components", "pipelines": "mammo.pipelines"}
BUILD_FILES = ("setup.py", "pyproject.toml", "README.md")


def source_modules(root: Path) -> set[str]:
    """Dotted names of every ``.py`` file under the package roots of a source tree."""
    names = set()
    for folder, prefix in PACKAGE_ROOTS.items():
        for path in (root / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(root / folder).with_suffix("").parts
            names.add(".".join([prefix, *parts]))
    return names


def wheel_modules(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {n[:-3].replace("/", ".") for n in zf.namelist() if n.startswith("mammo/") and n.endswith(".py")}


def missing_from_wheel(root: Path, wheel: Path) -> list[str]:
    return sorted(source_modules(root) - wheel_modules(wheel))


def copy_sources(dest: Path) -> Path:
    for folder in PACKAGE_ROOTS:
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, dest / name)
    return dest


def build_wheel(src: Path, out: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("mammo-*.whl")
    return wheel


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    src = copy_sources(tmp_path_factory.mktemp("src"))
    return src, build_wheel(src, tmp_path_factory.mktemp("wheel"))


def test_wheel_holds_every_module_of_components_and_pipelines(built):
    src, wheel = built
    assert missing_from_wheel(src, wheel) == []
    assert {"mammo.components.contracts", "mammo.pipelines.cli"} <= wheel_modules(wheel)


def test_wheel_holds_the_data_files_the_code_reads(built):
    src, wheel = built
    wanted = {str(p.relative_to(src)) for folder in PACKAGE_ROOTS for p in (src / folder).rglob("*")
              if p.is_file() and p.suffix in {".json", ".html", ".j2"}}
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n.removeprefix("mammo/") for n in zf.namelist()}
    assert wanted and wanted <= shipped


def test_a_module_added_after_the_build_is_reported_missing(built):
    src, wheel = built
    (src / "components" / "ingest" / "newmod.py").write_text("")
    try:
        assert missing_from_wheel(src, wheel) == ["mammo.components.ingest.newmod"]
    finally:
        (src / "components" / "ingest" / "newmod.py").unlink()


def test_a_new_step_folder_is_packaged_without_editing_any_list(tmp_path):
    src = copy_sources(tmp_path / "src")
    (src / "components" / "newstep").mkdir()
    (src / "components" / "newstep" / "__init__.py").write_text("")
    (src / "components" / "newstep" / "logic.py").write_text("def run():\n    return 1\n")
    wheel = build_wheel(src, tmp_path / "wheel")
    assert missing_from_wheel(src, wheel) == []
    assert "mammo.components.newstep.logic" in wheel_modules(wheel)
