"""Shell hygiene: the core type-checks strictly, and its invariants do not depend on ``assert``."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_core_passes_mypy_strict(monkeypatch):
    from mypy import api

    from tests.conftest import background_mypy

    early = background_mypy()  # the whole suite started it at collection (tests/conftest.py)
    if early is not None:
        output, status = early
        assert status == 0, output
        return
    # From the repo root so pyproject's [tool.mypy] (strict = true) applies; ~2 min with a cold cache.
    monkeypatch.chdir(REPO)
    stdout, stderr, status = api.run(["safesynth"])
    assert status == 0, stdout + stderr


def test_core_has_no_bare_asserts():
    found = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path in sorted((REPO / "safesynth").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Assert)
    ]
    assert not found, f"`assert` vanishes under python -O; raise InternalError instead: {found}"


def test_missing_bounds_fail_closed_under_python_O():
    # No `assert` in this snippet: it runs with -O.
    code = (
        "import sys\n"
        "import safesynth\n"
        "from safesynth.domains import bounds_of, categories_of\n"
        "from safesynth.errors import InternalError\n"
        "from safesynth.spec import CategoricalColumn, FloatColumn\n"
        "if not sys.flags.optimize: sys.exit('not running under -O')\n"
        "for check, col in [(bounds_of, FloatColumn(type='float', min=0.0)),\n"
        "                   (categories_of, CategoricalColumn(type='categorical'))]:\n"
        "    try:\n"
        "        check(col)\n"
        "    except InternalError:\n"
        "        continue\n"
        "    sys.exit(f'{check.__name__} accepted an unresolved domain')\n"
    )
    result = subprocess.run([sys.executable, "-O", "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
