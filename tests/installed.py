"""A regular (not editable) install of this checkout, as a user gets it from a wheel.

`install_wheel(tmp)` builds a wheel of a clean copy of the package files (so no `build/` folder of
the checkout can slip stale modules in), makes a new virtual environment, installs the wheel there
without its dependencies and makes a user folder that holds its own `evaluation/`, `training_data/`
and `network_model/` packages, each raising ImportError when imported. Nothing is downloaded: the
new environment sees this interpreter's site-packages through a `.pth` file (after its own
site-packages, so the installed `daqsm` comes first; `.pth` files of that folder, such as an editable
install's finder, are not run), so it works offline and in CI's fresh environment alike. The build
uses this environment's setuptools and wheel (`--no-build-isolation`; a Python 3.11 venv has
setuptools, and `wheel` comes with TensorFlow's dependencies), as the packaging would with them.

Measured (2 cores shared with other jobs, warm file cache): wheel 10 s, venv 0.3 s, install 7 s.
"""
from __future__ import annotations

import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: what setup.cfg packs: the package and the files its metadata reads
PACKAGE_FILES = ("daqsm", "setup.cfg", "pyproject.toml", "README.md")
#: the generic names a research folder often holds as its own packages
SHADOWING_PACKAGES = ("evaluation", "training_data", "network_model")


@dataclass(frozen=True)
class Installed:
    wheel: Path  # the built wheel
    venv: Path  # the new environment
    python: Path  # its interpreter
    bin: Path  # its console scripts
    site_packages: Path  # where the wheel went
    user_dir: Path  # a folder with its own evaluation/, training_data/, network_model/ packages

    def env(self, base: dict) -> dict:
        """`base` with PYTHONPATH = the user folder only (its packages first, never the checkout)."""
        return {**base, "PYTHONPATH": str(self.user_dir)}


def _run(cmd, **kwargs) -> None:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def build_wheel(dest: Path) -> Path:
    """Build a wheel of a clean copy of the package files into dest/wheel; returns its path."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in PACKAGE_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", dest / "wheel", src])
    (wheel,) = (dest / "wheel").glob("daqsm-*.whl")
    return wheel


def install_wheel(dest: Path) -> Installed:
    """Wheel -> new venv (dependencies seen from this interpreter) -> user folder with shadowing packages."""
    dest = Path(dest)
    wheel = build_wheel(dest)
    venv = dest / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site_packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        capture_output=True, text=True, check=True).stdout.strip())
    (site_packages / "_dependencies_of_the_test_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # this interpreter's pip installs into the new environment; --ignore-installed: the daqsm seen
    # through the .pth (an editable install of the checkout) is neither uninstalled nor reused
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--ignore-installed",
          "-q", wheel])
    user_dir = dest / "user_folder"
    for name in SHADOWING_PACKAGES:
        (user_dir / name).mkdir(parents=True)
        (user_dir / name / "__init__.py").write_text(
            f"raise ImportError(\"the user's own {name} package was imported instead of daqsm's\")\n")
    return Installed(wheel, venv, python, venv / "bin", site_packages, user_dir)
