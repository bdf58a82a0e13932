"""Cross-package checks, run by `nox -s tests_all` with all four packages installed together."""

from __future__ import annotations

import ast
import importlib.metadata
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder under packages/ → import name; the distribution names are read from each pyproject.toml.
IMPORT_NAMES = {"dgm-core": "dgm_core", "fqgan": "fqgan", "optimus": "optimus", "prevalent": "prevalent"}
MODEL_PACKAGES = ("fqgan", "optimus", "prevalent")
# CLIs that run other CLIs by design (they reproduce a paper's comparison end to end).
ORCHESTRATORS = {"fqgan.ablate", "optimus.claim", "prevalent.claim"}
# Third-party modules a package may import without declaring them, and why.
UNDECLARED_ALLOWED = {
    "triton": "ships with CUDA builds of torch; the fused kernel is used only where it imports",
}
# Import names whose distribution is named differently (used when the distribution is not installed).
DISTRIBUTION_OF = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn"}


def pyproject(folder: str) -> dict:
    return tomllib.loads((ROOT / "packages" / folder / "pyproject.toml").read_text())


def distribution_name(folder: str) -> str:
    return pyproject(folder)["project"]["name"]


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
    for folder in IMPORT_NAMES:
        dist_name = distribution_name(folder)
        dist = importlib.metadata.distribution(dist_name)
        scripts += [(dist_name, ep.name) for ep in dist.entry_points if ep.group == "console_scripts"]
    return scripts


def test_every_model_package_ships_console_scripts():
    owners = {owner for owner, _ in console_scripts()}
    assert {distribution_name(folder) for folder in MODEL_PACKAGES} <= owners


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


# ----------------------------------------------------------------------------- layering


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, module: str) -> set[str]:
    """Every module a file imports, at any depth (function-level imports too), relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def cli_modules() -> dict[str, set[str]]:
    """Each package's CLI (recipe) modules, as its console scripts name them."""
    found = {}
    for folder in IMPORT_NAMES:
        scripts = pyproject(folder)["project"].get("scripts", {})
        found[folder] = {target.split(":")[0] for target in scripts.values()}
    return found


@pytest.mark.parametrize("folder", list(IMPORT_NAMES))
def test_no_cli_or_recipe_imports_another(folder):
    src = ROOT / "packages" / folder / "src"
    clis = cli_modules()[folder]
    offenders = []
    for path in src.rglob("*.py"):
        module = _module_name(path, src)
        if module not in clis or module in ORCHESTRATORS:
            continue
        for imported in _imported_modules(path, module) & (clis - {module}):
            offenders.append(f"{module} imports {imported}")
    assert not offenders, "recipes/CLIs must share library modules instead: " + "; ".join(sorted(offenders))


def test_libraries_never_import_clis():
    offenders = []
    for folder, clis in cli_modules().items():
        src = ROOT / "packages" / folder / "src"
        for path in src.rglob("*.py"):
            module = _module_name(path, src)
            if module in clis:
                continue
            offenders += [f"{module} imports {m}" for m in _imported_modules(path, module) & clis]
    assert not offenders, "; ".join(sorted(offenders))


# ----------------------------------------------------------------------------- packaging


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _canonical(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip()).group(0))


def declared_distributions(folder: str) -> set[str]:
    project = pyproject(folder)["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {_requirement_name(r) for r in requirements}


def third_party_imports(folder: str) -> dict[str, set[str]]:
    """Top-level third-party module → files importing it, over the package's src (any depth)."""
    first_party = set(IMPORT_NAMES.values())
    found: dict[str, set[str]] = {}
    for name, files in imported_top_level_modules(ROOT / "packages" / folder / "src").items():
        if name not in sys.stdlib_module_names and name not in first_party and name != "__future__":
            found[name] = files
    return found


def _distributions_for(module: str) -> set[str]:
    installed = importlib.metadata.packages_distributions().get(module)
    if installed:
        return {_canonical(d) for d in installed}
    return {_canonical(DISTRIBUTION_OF.get(module, module))}


@pytest.mark.parametrize("folder", list(IMPORT_NAMES))
def test_every_third_party_import_is_declared(folder):
    declared = declared_distributions(folder)
    siblings = {_canonical(distribution_name(f)) for f in IMPORT_NAMES}
    missing = {
        module: sorted(files)[0]
        for module, files in third_party_imports(folder).items()
        if module not in UNDECLARED_ALLOWED and not (_distributions_for(module) & (declared | siblings))
    }
    assert not missing, f"{folder} imports undeclared third-party modules (module: a file): {missing}"


@pytest.mark.parametrize("folder", MODEL_PACKAGES)
def test_model_packages_depend_on_dgm_core_and_pin_its_minor_version(folder):
    requirements = pyproject(folder)["project"]["dependencies"]
    core = [r for r in requirements if _requirement_name(r) == "dgm-core"]
    assert core and "<" in core[0], f"{folder} must depend on dgm-core with an upper bound: {core}"


@pytest.mark.parametrize("folder", list(IMPORT_NAMES))
def test_version_is_written_once_and_license_file_matches(folder):
    project = pyproject(folder)
    assert "version" not in project["project"] and "version" in project["project"].get("dynamic", [])
    version_file = ROOT / "packages" / folder / project["tool"]["hatch"]["version"]["path"]
    assert re.search(r'^__version__ = "[0-9]+\.[0-9]+\.[0-9]+"', version_file.read_text(), re.M)
    license_text = (ROOT / "packages" / folder / "LICENSE").read_text()
    assert project["project"]["license"] == "MIT" and license_text.startswith("MIT License")


@pytest.mark.parametrize("folder", list(IMPORT_NAMES))
def test_installed_version_is_the_source_version(folder):
    module = __import__(IMPORT_NAMES[folder])
    assert importlib.metadata.version(distribution_name(folder)) == module.__version__
