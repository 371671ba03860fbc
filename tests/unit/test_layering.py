"""Architecture rules: the core never imports Prefect; flows -> tasks -> safesynth, never back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def imported_modules(package: Path) -> dict[Path, set[str]]:
    out = {}
    for path in package.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[path] = names
    return out


def test_core_never_imports_prefect_tasks_or_flows():
    for path, names in imported_modules(REPO / "safesynth").items():
        assert not names & {"prefect", "prefect_dask", "tasks", "flows"}, path


def test_tasks_never_import_flows():
    for path, names in imported_modules(REPO / "tasks").items():
        assert "flows" not in names, path


def test_whole_core_imports_without_loading_prefect():
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "safesynth").rglob("*.py") if p.name != "__init__.py"
    )
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "assert 'prefect' not in sys.modules, 'prefect was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)
