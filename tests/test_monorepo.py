"""Cross-package checks, run by `nox -s tests_all` with all four packages installed together."""

from __future__ import annotations

import ast
import importlib.metadata
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAMES = {"dgm-core": "dgm_core", "fqgan": "fqgan", "optimus": "optimus", "prevalent": "prevalent"}
MODEL_PACKAGES = ("fqgan", "optimus", "prevalent")


def imported_top_level_modules(package_dir: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in package_dir.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", list(IMPORT_NAMES))
def test_packages_never_import_each_other(package):
    imports = imported_top_level_modules(ROOT / "packages" / package / "src")
    others = (
        set(IMPORT_NAMES.values())
        - {IMPORT_NAMES[package]}
        - ({"dgm_core"} if package != "dgm-core" else set())
    )
    offenders = {name: sorted(files) for name, files in imports.items() if name in others}
    assert not offenders, f"{package} imports sibling packages: {offenders}"


def test_dgm_core_never_imports_transformers_or_torchvision():
    imports = imported_top_level_modules(ROOT / "packages" / "dgm-core" / "src")
    assert "transformers" not in imports and "torchvision" not in imports


def test_fqgan_never_imports_transformers():
    assert "transformers" not in imported_top_level_modules(ROOT / "packages" / "fqgan" / "src")


def test_importing_all_of_dgm_core_loads_no_model_library():
    code = (
        "import importlib, pkgutil, sys, dgm_core\n"
        "for m in pkgutil.walk_packages(dgm_core.__path__, 'dgm_core.'):\n"
        "    if 'triton' not in m.name: importlib.import_module(m.name)\n"
        "names = ('transformers', 'torchvision', 'fqgan', 'optimus', 'prevalent')\n"
        "bad = [n for n in names if n in sys.modules]\n"
        "sys.exit(f'loaded {bad}' if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout


def console_scripts() -> list[tuple[str, str]]:
    scripts = []
    for dist_name in IMPORT_NAMES:
        dist = importlib.metadata.distribution(dist_name)
        scripts += [(dist_name, ep.name) for ep in dist.entry_points if ep.group == "console_scripts"]
    return scripts


def test_every_model_package_ships_console_scripts():
    owners = {owner for owner, _ in console_scripts()}
    assert set(MODEL_PACKAGES) <= owners


@pytest.mark.parametrize(("owner", "script"), console_scripts())
def test_every_console_script_documents_the_shared_runtime_options(owner, script):
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--config" in result.stdout


def test_every_package_module_imports():
    failures = []
    for import_name in IMPORT_NAMES.values():
        module = __import__(import_name)
        for info in pkgutil.walk_packages(module.__path__, import_name + "."):
            if "triton" in info.name:
                continue
            try:
                __import__(info.name)
            except Exception as error:  # collect all, report together
                failures.append(f"{info.name}: {error!r}")
    assert not failures, failures
