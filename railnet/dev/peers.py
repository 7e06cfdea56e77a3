"""Build the bench-only Go peers railnet is measured against (whereabouts, Multus's thick plugin,
Kubeflow's training operator).

    python -m railnet.dev.peers build     # build what is missing (no-op when built); `make bench` runs it
    python -m railnet.dev.peers path      # print the binary directory
    python -m railnet.dev.peers status    # list the binaries; exit 1 if any is missing

whereabouts: same approach as railnet.dev.k8sbin, whose helpers this imports: a pinned module version,
a throw-away wrapper module, an atomic move into a versioned cache directory, a lock shared by
concurrent builds and progress once a minute. Multus (multus-daemon + multus-shim) is not served by the
Go module proxy: the workspace's `shared/peers/build-multus.sh OUT_DIR` builds it from a source snapshot
at a pinned commit, into its own cache directory (~/.cache/railnet/peers/multus-<commit>/). Kubeflow's
training operator (v1.8.1, `cmd/training-operator.v1`, the peer of `railnet controller`) is served by
the proxy and built like whereabouts, but into its own directory
(~/.cache/railnet/peers/training-operator-<version>/) so that adding it rebuilt nothing else; its
kubeflow.org TFJob and PyTorchJob CRDs (`manifests/base/crds/`) come from the same module version.
Peers are never built by `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from railnet.dev import k8sbin
from railnet.dev.k8sbin import BuildError, Component, Log

WHEREABOUTS_VERSION: Final = "v0.9.2"
ENV_BIN_DIR: Final = "RAILNET_PEERS_BIN_DIR"
COMPONENTS: Final = (
    Component(
        "whereabouts",
        "github.com/k8snetworkplumbingwg/whereabouts",
        WHEREABOUTS_VERSION,
        ("github.com/k8snetworkplumbingwg/whereabouts/cmd",),
        # its CRDs, installed from the same module version the binary is built from
        assets=(
            "doc/crds/whereabouts.cni.cncf.io_ippools.yaml",
            "doc/crds/whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml",
        ),
    ),
)
BINARY: Final = {"whereabouts": "whereabouts"}  # the main package is .../cmd; the binary is named here

# Kubeflow's training operator, the peer of `railnet controller` (tests/bench/bench_jobs_operator.py).
# Its go.mod has no replace directives, so the plain wrapper module builds it.
TRAINING_OPERATOR_VERSION: Final = "v1.8.1"
TRAINING_OPERATOR: Final = Component(
    "training-operator",
    "github.com/kubeflow/training-operator",
    TRAINING_OPERATOR_VERSION,
    ("github.com/kubeflow/training-operator/cmd/training-operator.v1",),
    assets=(
        "manifests/base/crds/kubeflow.org_pytorchjobs.yaml",
        "manifests/base/crds/kubeflow.org_tfjobs.yaml",
    ),
)

# Multus thick plugin: the commit of the source snapshot build-multus.sh builds (its header names it).
MULTUS_COMMIT: Final = "95a0932350f0060cd232096876e24672a1de83fa"  # tag v4.3.0
MULTUS_BINARIES: Final = ("multus-daemon", "multus-shim")
ENV_MULTUS_SCRIPT: Final = "RAILNET_MULTUS_BUILD_SCRIPT"


def version_key() -> str:
    return "_".join(f"{c.name}-{c.version}" for c in COMPONENTS)


def bin_dir() -> Path:
    override = os.environ.get(ENV_BIN_DIR)
    if override:
        return Path(override).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "railnet" / "peers" / version_key()


def _manifest(directory: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads((directory / k8sbin.MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def missing(directory: Path | None = None) -> list[str]:
    directory = directory or bin_dir()
    manifest = _manifest(directory)
    return [c.name for c in COMPONENTS
            if manifest.get(c.name, {}).get("version") != c.version or not os.access(directory / BINARY[c.name], os.X_OK)]


def binary(name: str) -> Path:
    if name in missing():
        raise BuildError(f"{name} is not built in {bin_dir()}: run `python -m railnet.dev.peers build`")
    return bin_dir() / BINARY[name]


def asset(name: str, file: str) -> Path:
    return bin_dir() / f"{name}-assets" / file


def training_operator_dir() -> Path:
    return bin_dir().parent / f"{TRAINING_OPERATOR.name}-{TRAINING_OPERATOR.version}"


def training_operator_missing() -> bool:
    directory, comp = training_operator_dir(), TRAINING_OPERATOR
    return (_manifest(directory).get(comp.name, {}).get("version") != comp.version
            or not os.access(directory / comp.name, os.X_OK)
            or not all((directory / f"{comp.name}-assets" / Path(a).name).is_file() for a in comp.assets))


def training_operator_binary() -> Path:
    if training_operator_missing():
        raise BuildError(f"the training operator is not built in {training_operator_dir()}: "
                         "run `python -m railnet.dev.peers build`")
    return training_operator_dir() / TRAINING_OPERATOR.name


def training_operator_crd(kind: str) -> Path:
    """The operator's own CRD file for `kind` ("pytorchjobs" or "tfjobs"), from its module."""
    return training_operator_dir() / f"{TRAINING_OPERATOR.name}-assets" / f"kubeflow.org_{kind}.yaml"


def multus_dir() -> Path:
    return bin_dir().parent / f"multus-{MULTUS_COMMIT[:12]}"


def multus_script() -> Path:
    override = os.environ.get(ENV_MULTUS_SCRIPT)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "peers" / "build-multus.sh"


def multus_missing() -> bool:
    directory = multus_dir()
    return _manifest(directory).get("multus", {}).get("commit") != MULTUS_COMMIT or not all(
        os.access(directory / b, os.X_OK) for b in MULTUS_BINARIES)


def multus_binary(name: str) -> Path:
    if name not in MULTUS_BINARIES:
        raise ValueError(f"not a Multus binary: {name}")
    if multus_missing():
        raise BuildError(f"Multus is not built in {multus_dir()}: run `python -m railnet.dev.peers build`")
    return multus_dir() / name


def build_multus(log: Log = k8sbin._say) -> Path:
    """multus-daemon and multus-shim from the snapshot, via build-multus.sh (Go module proxy for its deps)."""
    directory = multus_dir()
    if not multus_missing():
        return directory
    script = multus_script()
    if not script.is_file():
        raise BuildError(f"{script} not found: it builds Multus from its source snapshot (set {ENV_MULTUS_SCRIPT})")
    header = script.read_text()
    if MULTUS_COMMIT not in header:
        raise BuildError(f"{script} does not build Multus at {MULTUS_COMMIT}: update MULTUS_COMMIT in {__file__}")
    directory.mkdir(parents=True, exist_ok=True)
    with k8sbin._locked(directory, log):
        if not multus_missing():
            return directory
        go_version = k8sbin.check_go()
        start = time.monotonic()
        log(f"==> multus (thick: daemon + shim) at {MULTUS_COMMIT[:12]} with {script}")
        with tempfile.TemporaryDirectory(dir=directory, prefix="out-") as tmp:
            proc = subprocess.run(["bash", str(script), tmp], capture_output=True, text=True, check=False,
                                  env=k8sbin._go_env(), timeout=1800)
            (directory / "build.log").write_text(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                raise BuildError(f"building Multus failed (exit {proc.returncode}); see {directory / 'build.log'}:\n"
                                 f"{(proc.stdout + proc.stderr)[-2000:]}")
            for name in MULTUS_BINARIES:
                os.replace(Path(tmp) / name, directory / name)
        manifest = {"multus": {"commit": MULTUS_COMMIT, "script": str(script), "go": go_version,
                               "build_seconds": f"{time.monotonic() - start:.0f}"}}
        (directory / k8sbin.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        log(f"    built multus in {time.monotonic() - start:.0f}s")
    return directory


def _build_one(comp: Component, directory: Path, binary_name: str, go_version: str, log: Log) -> None:
    """Build one proxy-served peer into `directory` (binary + assets + manifest entry); lock held by the caller."""
    start = time.monotonic()
    root = directory / ".build"
    root.mkdir(exist_ok=True)
    log(f"==> {comp.name} {comp.module}@{comp.version}")
    workdir = root / comp.name
    workdir.mkdir(exist_ok=True)
    (workdir / "go.mod").write_text(k8sbin._wrapper_gomod(comp, root))
    with tempfile.TemporaryDirectory(dir=root, prefix=f"out-{comp.name}-") as tmp:
        k8sbin._run_build(comp, workdir, Path(tmp), root / f"{comp.name}.log", log)
        built = Path(tmp) / comp.binaries[0]
        os.replace(built, directory / binary_name)
    info = json.loads(k8sbin._go(["mod", "download", "-json", f"{comp.module}@{comp.version}"], cwd=root))
    target = directory / f"{comp.name}-assets"
    target.mkdir(exist_ok=True)
    for rel in comp.assets:
        src = Path(info["Dir"]) / rel
        if not src.is_file():
            raise BuildError(f"{comp.module}@{comp.version} has no {rel}")
        shutil.copyfile(src, target / src.name)
    manifest = _manifest(directory)
    manifest[comp.name] = {"module": comp.module, "version": comp.version, "go": go_version,
                           "build_seconds": f"{time.monotonic() - start:.0f}"}
    (directory / k8sbin.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"    built {comp.name} in {time.monotonic() - start:.0f}s")


def build_training_operator(log: Log = k8sbin._say) -> Path:
    """Kubeflow's training operator (manager binary + kubeflow.org CRDs) into its own cache directory."""
    directory = training_operator_dir()
    if not training_operator_missing():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    with k8sbin._locked(directory, log):
        if not training_operator_missing():
            return directory
        go_version = k8sbin.check_go()
        (directory / ".build").mkdir(exist_ok=True)
        k8sbin._check_modules([TRAINING_OPERATOR], directory / ".build")
        _build_one(TRAINING_OPERATOR, directory, TRAINING_OPERATOR.name, go_version, log)
    return directory


def build(log: Log = k8sbin._say) -> Path:
    build_multus(log)
    build_training_operator(log)
    directory = bin_dir()
    if not missing(directory):
        log(f"==> bench peers up to date in {directory}")
        return directory
    with k8sbin._locked(directory, log):
        todo = [c for c in COMPONENTS if c.name in missing(directory)]
        if not todo:
            return directory
        go_version = k8sbin.check_go()
        root = directory / ".build"
        root.mkdir(exist_ok=True)
        k8sbin._check_modules(todo, root)
        for comp in todo:
            _build_one(comp, directory, BINARY[comp.name], go_version, log)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m railnet.dev.peers", description=__doc__.split("\n")[0])
    parser.add_argument("cmd", choices=("build", "path", "status"))
    args = parser.parse_args(argv)
    if args.cmd == "path":
        print(bin_dir())
        return 0
    if args.cmd == "status":
        absent = set(missing())
        for comp in COMPONENTS:
            print(f"{comp.name:14} {comp.module}@{comp.version}  {'missing' if comp.name in absent else 'built'}")
        multus_absent = multus_missing()
        print(f"{'multus':14} multus-cni@{MULTUS_COMMIT[:12]} (snapshot)  {'missing' if multus_absent else 'built'}"
              f"  {multus_dir()}")
        to_absent = training_operator_missing()
        print(f"{TRAINING_OPERATOR.name:14} {TRAINING_OPERATOR.module}@{TRAINING_OPERATOR.version}  "
              f"{'missing' if to_absent else 'built'}  {training_operator_dir()}")
        return 1 if absent or multus_absent or to_absent else 0
    try:
        build()
    except BuildError as exc:
        print(f"railnet.dev.peers: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
