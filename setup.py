"""Package discovery for the `mammo` distribution (the metadata lives in pyproject.toml).

The import name is ``mammo`` while the code sits in the top-level folders ``components/`` and
``pipelines/``; every folder below them that holds a ``.py`` file becomes a package, so a new step or
module needs no hand-kept list. Non-Python files the code reads (JSON suites, HTML templates) ship too.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"mammo.components": "components", "mammo.pipelines": "pipelines"}
DATA = ["*.json", "*.html", "*.j2", "*.css", "templates/*"]


def discover() -> list[str]:
    here = Path(__file__).parent
    packages = []
    for name, folder in ROOTS.items():
        for d in sorted(p for p in (here / folder).rglob("*") if p.is_dir()) + [here / folder]:
            if d.name == "__pycache__" or d.name == "templates" or not any(d.glob("*.py")):
                continue
            rel = d.relative_to(here / folder)
            packages.append(".".join([name, *rel.parts]))
    return sorted(set(packages))


setup(packages=discover(), package_dir=ROOTS, package_data={"": DATA})
