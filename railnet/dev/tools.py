"""Build the pinned command-line tools the tests need beside the Kubernetes binaries (helm), and fetch the
few files they need from other projects' modules (the ServiceMonitor CRD).

    python -m railnet.dev.tools build     # build what is missing (no-op when built); `make test` runs it
    python -m railnet.dev.tools path      # print the directory
    python -m railnet.dev.tools status    # list the tools; exit 1 if any is missing

Same approach as railnet.dev.k8sbin, whose helpers this imports: a pinned module version, a throw-away
wrapper module, an atomic move into a cache directory keyed by the tool's own version
(~/.cache/railnet/tools/<name>-<version>/), a lock shared by concurrent builds and progress once a
minute. Each tool has its own directory, so adding one rebuilds nothing else, and the k8s-bin key is
untouched (helm is not a k8sbin component on purpose: that key names the shared control-plane dir).
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

HELM_VERSION: Final = "v3.22.0"
ENV_HELM: Final = "RAILNET_HELM"  # a helm binary to use instead of building one
HELM: Final = Component(
    "helm",
    "helm.sh/helm/v3",
    HELM_VERSION,
    ("helm.sh/helm/v3/cmd/helm",),
    # `helm version` reports this instead of "main" (internal/version.version).
    ldflags=(f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",),
)
TOOLS: Final = (HELM,)
# Only a file: the ServiceMonitor CRD, so tests can check the chart's ServiceMonitor against its real schema
# (the chart does not install it). From the operator's module, as peers.py takes CRDs from theirs.
PROMETHEUS_OPERATOR: Final = Component(
    "prometheus-operator", "github.com/prometheus-operator/prometheus-operator", "v0.85.0", (),
    assets=("example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",),
)


def cache_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "railnet" / "tools"


def tool_dir(comp: Component) -> Path:
    return cache_root() / f"{comp.name}-{comp.version}"


def _manifest(directory: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads((directory / k8sbin.MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_missing(comp: Component) -> bool:
    directory = tool_dir(comp)
    return (_manifest(directory).get(comp.name, {}).get("version") != comp.version
            or not os.access(directory / comp.binaries[0], os.X_OK))


def helm() -> Path:
    """The helm binary ($RAILNET_HELM, else the built one); BuildError with what to run if not built."""
    override = os.environ.get(ENV_HELM)
    if override:
        return Path(override)
    if is_missing(HELM):
        raise BuildError(f"helm {HELM_VERSION} is not built in {tool_dir(HELM)}: run `python -m railnet.dev.tools build`")
    return tool_dir(HELM) / "helm"


def _version_check(path: Path, version: str) -> None:
    """The built binary runs and reports its pin (`helm version --short` -> v3.22.0+g<commit>)."""
    try:
        out = subprocess.run([str(path), "version", "--short"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise BuildError(f"built {path} does not run: {exc}") from exc
    if not out.stdout.startswith(version):
        raise BuildError(f"{path} version --short does not report {version}: {(out.stdout + out.stderr).strip()[:300]}")


def build_tool(comp: Component, log: Log = k8sbin._say) -> Path:
    """Build one tool into its own directory (binary + manifest); a no-op when built."""
    directory = tool_dir(comp)
    if not is_missing(comp):
        return directory
    with k8sbin._locked(directory, log):
        if not is_missing(comp):
            return directory  # built by someone else while we waited for the lock
        go_version = k8sbin.check_go()
        root = directory / ".build"
        root.mkdir(exist_ok=True)
        k8sbin._check_modules([comp], root)
        start = time.monotonic()
        log(f"==> {comp.name} {comp.module}@{comp.version} into {directory}")
        workdir = root / comp.name
        workdir.mkdir(exist_ok=True)
        (workdir / "go.mod").write_text(k8sbin._wrapper_gomod(comp, root))
        with tempfile.TemporaryDirectory(dir=root, prefix=f"out-{comp.name}-") as tmp:
            k8sbin._run_build(comp, workdir, Path(tmp), root / f"{comp.name}.log", log)
            built = Path(tmp) / comp.binaries[0]
            _version_check(built, comp.version)
            os.replace(built, directory / comp.binaries[0])  # atomic: no half-written binary
        seconds = round(time.monotonic() - start, 1)
        manifest = {comp.name: {"module": comp.module, "version": comp.version, "go": go_version,
                                "build_seconds": f"{seconds:.0f}",
                                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
        (directory / k8sbin.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        log(f"    built {comp.name} in {seconds:.0f}s")
    return directory


def asset(comp: Component, rel: str) -> Path:
    return tool_dir(comp) / Path(rel).name


def servicemonitor_crd() -> Path:
    """The ServiceMonitor CRD file; BuildError with what to run when it has not been fetched."""
    path = asset(PROMETHEUS_OPERATOR, PROMETHEUS_OPERATOR.assets[0])
    if not path.is_file():
        raise BuildError(f"{path} is missing: run `python -m railnet.dev.tools build`")
    return path


def fetch_assets(comp: Component, log: Log = k8sbin._say) -> None:
    """Copy `comp.assets` out of its module (downloaded through the Go module proxy) into its directory."""
    directory = tool_dir(comp)
    if all(asset(comp, a).is_file() for a in comp.assets):
        return
    with k8sbin._locked(directory, log):
        k8sbin.check_go()
        log(f"==> {comp.module}@{comp.version}: {', '.join(Path(a).name for a in comp.assets)}")
        info = json.loads(k8sbin._go(["mod", "download", "-json", f"{comp.module}@{comp.version}"], cwd=directory))
        for rel in comp.assets:
            src = Path(info["Dir"]) / rel
            if not src.is_file():
                raise BuildError(f"{comp.module}@{comp.version} has no {rel}")
            tmp = directory / f".{src.name}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, asset(comp, rel))


def build(log: Log = k8sbin._say) -> None:
    for comp in TOOLS:
        if is_missing(comp):
            build_tool(comp, log)
        else:
            log(f"==> {comp.name} {comp.version} up to date in {tool_dir(comp)}")
    fetch_assets(PROMETHEUS_OPERATOR, log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m railnet.dev.tools", description=__doc__.split("\n")[0])
    parser.add_argument("cmd", choices=("build", "path", "status"))
    args = parser.parse_args(argv)
    if args.cmd == "path":
        print(cache_root())
        return 0
    if args.cmd == "status":
        absent = [c.name for c in TOOLS if is_missing(c)]
        for comp in TOOLS:
            print(f"{comp.name:8} {comp.module}@{comp.version}  {'missing' if comp.name in absent else 'built'}"
                  f"  {tool_dir(comp)}")
        crd = asset(PROMETHEUS_OPERATOR, PROMETHEUS_OPERATOR.assets[0])
        print(f"{'servicemonitor CRD':8} {PROMETHEUS_OPERATOR.module}@{PROMETHEUS_OPERATOR.version}  "
              f"{'fetched' if crd.is_file() else 'missing'}  {crd}")
        return 1 if absent or not crd.is_file() else 0
    try:
        build()
    except BuildError as exc:
        print(f"railnet.dev.tools: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
