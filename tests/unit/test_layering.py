"""Architecture rules: the core never imports Prefect; flows -> tasks -> safesynth, never back."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


def imported_modules(package: Path) -> dict[Path, set[str]]:
    out = {}
    for path in package.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[path] = names
    return out


def starting_with(names: set[str], *prefixes: str) -> set[str]:
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)}


SHELL = ("safesynth.flows", "safesynth.tasks", "safesynth.deployments", "flows", "tasks", "deployments")


def test_core_never_imports_prefect_tasks_or_flows():
    for path, names in imported_modules(REPO / "safesynth").items():
        assert not starting_with(names, "prefect", "prefect_dask", *SHELL), path


def test_tasks_never_import_flows_and_the_shell_imports_itself_by_its_installed_name():
    for path, names in imported_modules(REPO / "tasks").items():
        assert not starting_with(names, "safesynth.flows", "flows"), path
    for folder in ("flows", "tasks", "deployments"):
        for path, names in imported_modules(REPO / folder).items():
            assert not starting_with(names, "flows", "tasks", "deployments"), path  # not installed by that name


def test_whole_core_imports_without_loading_prefect():
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "safesynth").rglob("*.py") if p.name != "__init__.py"
    )
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "assert 'prefect' not in sys.modules, 'prefect was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package_with_every_subpackage(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(REPO)], check=True, timeout=600, capture_output=True)
    (wheel,) = tmp_path.glob("safesynth-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"safesynth"}
    packages = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("/__init__.py")}
    in_repo = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "safesynth").rglob("__init__.py")}
    in_repo |= {f"safesynth.{d}" for d in ("flows", "tasks", "deployments")}
    assert packages == in_repo  # a new subpackage must be listed in pyproject's [tool.setuptools] packages
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "safesynth = safesynth.flows.cli:main" in entry
