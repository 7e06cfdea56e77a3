"""Build the pinned Kubernetes binaries (control plane, real node, tools) from Go modules.

No release binaries can be downloaded where railnet is developed, but the Go module proxy is
reachable, so the control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok)
and the real node (kubelet, kube-proxy, kubectl, containerd + shim + ctr, crictl, CoreDNS) are compiled
from their modules into a cache directory outside the repository and reused from there.

Each component is cached in its own directory keyed by its own version
(~/.cache/railnet/k8s-bin/<component>-<version>/), so adding or bumping one component never rebuilds
the others; bin_dir() is a directory of symlinks to all of them, keyed by every pin.

    python -m railnet.dev.k8sbin build     # build what is missing (fast no-op when everything is built)
    python -m railnet.dev.k8sbin path      # print the binary directory
    python -m railnet.dev.k8sbin status    # list the binaries; exit 1 if any is missing

k8s.io/kubernetes and go.etcd.io/etcd/server/v3 cannot be `go install`ed (their go.mod files carry
`replace` directives), so each component is built inside a throw-away wrapper module generated in the
cache's `.build/` directory; for Kubernetes the wrapper replaces every staging module `k8s.io/*` with
its published v0.X.Y release.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

# The one place the control-plane versions are pinned. etcd 3.7 is what k8s.io/kubernetes v1.37.x
# requires as its client (go.mod: go.etcd.io/etcd/client/v3 v3.7.0); kwok v0.8.0 is its latest release.
KUBERNETES_VERSION: Final = "v1.37.2"
ETCD_VERSION: Final = "v3.7.3"
KWOK_VERSION: Final = "v0.8.0"
# The real node: containerd v2 (kubelet 1.37 needs containerd >= 2.0; Debian's 1.6 is too old), crictl
# of the same minor as Kubernetes, CoreDNS's latest release (its go.mod wants go 1.26.0 too).
CONTAINERD_VERSION: Final = "v2.4.2"
CRI_TOOLS_VERSION: Final = "v1.37.0"
COREDNS_VERSION: Final = "v1.15.0"
GO_MIN_VERSION: Final = (1, 26)  # every pinned module declares `go 1.26.x` (containerd: 1.26.6)

ENV_BIN_DIR: Final = "RAILNET_K8S_BIN_DIR"
BINARIES: Final = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
NODE_BINARIES: Final = ("kubelet", "kube-proxy", "kubectl", "containerd", "containerd-shim-runc-v2", "ctr",
                        "crictl", "coredns")
MANIFEST: Final = "manifest.json"

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """A binary could not be built; the message says why and what to do."""


@dataclass(frozen=True)
class Component:
    name: str
    module: str
    version: str
    packages: tuple[str, ...]  # main packages; the binary is named after the last path element
    assets: tuple[str, ...] = ()  # files copied from the module source into <bin_dir>/<name>-assets/
    ldflags: tuple[str, ...] = ()  # extra `-X pkg.var=value` flags, so `--version` reports the pin

    @property
    def binaries(self) -> tuple[str, ...]:
        return tuple(_binary_name(p) for p in self.packages)


COMPONENTS: Final = (
    Component("etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION, ("go.etcd.io/etcd/server/v3",)),
    # Since v0.8.0 the kwok binary has no built-in stages; ship upstream's, matching the binary.
    Component(
        "kwok",
        "sigs.k8s.io/kwok",
        KWOK_VERSION,
        ("sigs.k8s.io/kwok/cmd/kwok",),
        assets=(
            "kustomize/stage/node/fast/node-initialize.yaml",
            "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
            "kustomize/stage/pod/fast/pod-ready.yaml",
            "kustomize/stage/pod/fast/pod-complete.yaml",
            "kustomize/stage/pod/fast/pod-delete.yaml",
            "kustomize/stage/pod/chaos/pod-container-running-failed.yaml",
        ),
    ),
    Component(
        "kubernetes",
        "k8s.io/kubernetes",
        KUBERNETES_VERSION,
        (
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/kubernetes/cmd/kube-scheduler",
        ),
    ),
    # A separate component (same module and version) so that adding it did not rebuild the control plane.
    Component(
        "kubernetes-node",
        "k8s.io/kubernetes",
        KUBERNETES_VERSION,
        ("k8s.io/kubernetes/cmd/kubelet", "k8s.io/kubernetes/cmd/kube-proxy", "k8s.io/kubernetes/cmd/kubectl"),
    ),
    Component(
        "containerd",
        "github.com/containerd/containerd/v2",
        CONTAINERD_VERSION,
        (
            "github.com/containerd/containerd/v2/cmd/containerd",
            "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
            "github.com/containerd/containerd/v2/cmd/ctr",
        ),
        ldflags=(f"-X github.com/containerd/containerd/v2/version.Version={CONTAINERD_VERSION}",),
    ),
    Component(
        "cri-tools",
        "sigs.k8s.io/cri-tools",
        CRI_TOOLS_VERSION,
        ("sigs.k8s.io/cri-tools/cmd/crictl",),
        ldflags=(f"-X sigs.k8s.io/cri-tools/pkg/version.Version={CRI_TOOLS_VERSION}",),
    ),
    Component("coredns", "github.com/coredns/coredns", COREDNS_VERSION, ("github.com/coredns/coredns",)),
)

# How each binary is asked for its version, where it is not `--version`.
_VERSION_ARGS: Final = {
    "containerd-shim-runc-v2": ["-v"],
    "coredns": ["-version"],
    "kubectl": ["version", "--client"],
}


def _binary_name(package: str) -> str:
    return "etcd" if package.startswith("go.etcd.io/etcd/server") else package.rsplit("/", 1)[-1]


def version_key() -> str:
    return (f"k8s-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}_containerd-{CONTAINERD_VERSION}"
            f"_crictl-{CRI_TOOLS_VERSION}_coredns-{COREDNS_VERSION}")


def _override() -> Path | None:
    value = os.environ.get(ENV_BIN_DIR)
    return Path(value).expanduser().resolve() if value else None


def cache_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "railnet" / "k8s-bin"


def bin_dir() -> Path:
    """Where the binaries are found: $RAILNET_K8S_BIN_DIR, else ~/.cache/railnet/k8s-bin/<version-key>.

    Without the override that directory only holds symlinks into the per-component directories.
    """
    return _override() or cache_root() / version_key()


def component_dir(comp: Component) -> Path:
    """Where one component is built: its own <name>-<version> directory (the override: one flat dir)."""
    return _override() or cache_root() / f"{comp.name}-{comp.version}"


def _read_manifest(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _component_built(directory: Path, manifest: dict[str, Any], comp: Component) -> bool:
    # The manifest guards against an overridden directory holding binaries of other versions.
    entry = manifest.get("components", {}).get(comp.name, {})
    if entry.get("version") != comp.version:
        return False
    if not all((asset_dir(comp.name, directory) / Path(a).name).is_file() for a in comp.assets):
        return False
    return all(os.access(directory / b, os.X_OK) for b in comp.binaries)


def asset_dir(component: str, directory: Path | None = None) -> Path:
    """Where a component's copied source files live (e.g. kwok's stage YAML)."""
    return (directory or bin_dir()) / f"{component}-assets"


def _copy_assets(comp: Component, directory: Path, scratch: Path) -> None:
    if not comp.assets:
        return
    info = json.loads(_go(["mod", "download", "-json", f"{comp.module}@{comp.version}"], cwd=scratch))
    target = asset_dir(comp.name, directory)
    target.mkdir(exist_ok=True)
    for rel in comp.assets:
        src = Path(info["Dir"]) / rel
        if not src.is_file():
            raise BuildError(f"{comp.module}@{comp.version} has no {rel}")
        shutil.copyfile(src, target / src.name)


def missing(directory: Path | None = None) -> list[str]:
    """Names of the pinned binaries not (or not at the pinned version) in `directory`.

    Without `directory`: each component in its own directory, and the links of bin_dir() to it.
    """
    out = []
    view = bin_dir()
    for comp in COMPONENTS:
        d = directory or component_dir(comp)
        built = _component_built(d, _read_manifest(d), comp)
        if built and directory is None and d != view:
            built = all((view / b).resolve() == (d / b).resolve() for b in comp.binaries)
        out += [] if built else list(comp.binaries)
    return out


def _link_view(log: Log) -> None:
    """Point bin_dir()'s symlinks at the component directories (nothing to do with the override)."""
    view = bin_dir()
    if _override():
        return
    view.mkdir(parents=True, exist_ok=True)
    for comp in COMPONENTS:
        d = component_dir(comp)
        names = list(comp.binaries) + ([asset_dir(comp.name, d).name] if comp.assets else [])
        for name in names:
            link = view / name
            if link.is_symlink() and link.resolve() == (d / name).resolve():
                continue
            tmp = view / f".{name}.tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(d / name)
            if link.is_dir() and not link.is_symlink():
                shutil.rmtree(link)
            os.replace(tmp, link)


def _adopt(comp: Component, directory: Path, manifest: dict[str, Any], log: Log) -> bool:
    """Reuse a component already built at its version in another cache dir (the old one-dir layout)."""
    for other in sorted(cache_root().glob(f"*/{MANIFEST}")):
        src = other.parent
        if src == directory or not _component_built(src, _read_manifest(src), comp):
            continue
        if any((src / b).is_symlink() for b in comp.binaries):
            continue
        for name in comp.binaries:
            tmp = directory / f".{name}.adopt"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                os.link(src / name, tmp)  # same filesystem: no copy, no extra disk
            except OSError:
                shutil.copy2(src / name, tmp)
            os.replace(tmp, directory / name)
        if comp.assets:
            shutil.copytree(asset_dir(comp.name, src), asset_dir(comp.name, directory), dirs_exist_ok=True)
        entry = dict(_read_manifest(src)["components"][comp.name])
        entry["adopted_from"] = str(src)
        manifest.setdefault("components", {})[comp.name] = entry
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        log(f"==> {comp.name} {comp.version}: reused the build in {src}")
        return True
    return False


def binary(name: str) -> Path:
    """Path of one built binary; raises BuildError if it has not been built."""
    directory = bin_dir()
    if name in missing():
        raise BuildError(f"{name} is not built in {directory}: run `make k8s-bin` (python -m railnet.dev.k8sbin build)")
    return directory / name


# --------------------------------------------------------------------------------------------- go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOTOOLCHAIN="local",  # never fetch another toolchain behind the user's back
        GOFLAGS="-mod=mod",  # let the wrapper modules fill their go.sum
        GOWORK="off",
        CGO_ENABLED="0",  # static binaries, no C toolchain needed
    )
    return env


def _go(args: list[str], cwd: Path, timeout: float = 600) -> str:
    try:
        proc = subprocess.run(
            ["go", *args], cwd=cwd, env=_go_env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"`go {' '.join(args)}` did not finish within {timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise BuildError(_explain_go_failure(args, proc.stderr))
    return proc.stdout


_NETWORK_HINTS = (
    "dial tcp",
    "no such host",
    "connection refused",
    "i/o timeout",
    "proxyconnect",
    "TLS handshake",
    "network is unreachable",
    "connection reset",
)


def _explain_go_failure(args: list[str], stderr: str) -> str:
    tail = "\n".join(stderr.strip().splitlines()[-15:])
    shown = " ".join(args)
    shown = shown if len(shown) < 160 else shown[:157] + "..."
    if any(h in stderr for h in _NETWORK_HINTS):
        proxy = os.environ.get("GOPROXY") or "the default https://proxy.golang.org,direct"
        return (
            f"the Go module proxy is unreachable (GOPROXY={proxy}); railnet builds its control plane "
            f"from Go modules, so it needs the proxy (or a filled GOMODCACHE).\n`go {shown}`:\n{tail}"
        )
    return f"`go {shown}` failed:\n{tail}"


def check_go() -> str:
    """Return the Go version string, or raise BuildError if Go is missing or too old."""
    if shutil.which("go") is None:
        raise BuildError(
            "Go is not installed (no `go` on PATH). The control plane is built from Go modules: install "
            f"Go >= {GO_MIN_VERSION[0]}.{GO_MIN_VERSION[1]} from https://go.dev/dl or your package manager."
        )
    out = _go(["env", "GOVERSION"], cwd=Path.cwd(), timeout=60).strip()
    m = re.match(r"go(\d+)\.(\d+)", out)
    if not m or (int(m[1]), int(m[2])) < GO_MIN_VERSION:
        raise BuildError(
            f"Go {out} is too old: the pinned modules need Go >= {GO_MIN_VERSION[0]}.{GO_MIN_VERSION[1]}"
        )
    return out


def _check_modules(comps: list[Component], scratch: Path) -> None:
    """Resolve every pinned module on the proxy first, so a bad pin or a dead proxy fails in seconds."""
    refs = [f"{c.module}@{c.version}" for c in comps]
    try:
        _go(["list", "-m", *refs], cwd=scratch, timeout=180)
    except BuildError as exc:
        raise BuildError(f"cannot resolve the pinned modules on the Go module proxy: {exc}") from None


def _staging_version(k8s_version: str) -> str:
    # k8s.io/kubernetes v1.X.Y publishes its staging modules (k8s.io/api, ...) as v0.X.Y.
    return "v0." + k8s_version.removeprefix("v1.")


def _wrapper_gomod(comp: Component, scratch: Path) -> str:
    lines = [f"module railnet.local/build/{comp.name}", "", "go 1.26.0", ""]
    if comp.module == "k8s.io/kubernetes":
        info = json.loads(_go(["mod", "download", "-json", f"{comp.module}@{comp.version}"], cwd=scratch))
        upstream = json.loads(_go(["mod", "edit", "-json", info["GoMod"]], cwd=scratch))
        lines[2] = f"go {upstream.get('Go', '1.26.0')}"
        # Keep upstream's godebug defaults: the binaries must behave as upstream's release builds.
        lines += [f"godebug {g['Key']}={g['Value']}" for g in upstream.get("GoDebug") or []]
        # Only the staging modules kubernetes requires: some (sample-controller, ...) are replaced
        # upstream but never published for every release.
        required = {r["Path"] for r in upstream.get("Require") or []}
        staging = sorted(
            r["Old"]["Path"]
            for r in upstream.get("Replace") or []
            if r["New"]["Path"].startswith("./staging/src/") and r["Old"]["Path"] in required
        )
        if not staging:
            raise BuildError(f"{comp.module}@{comp.version}: found no staging replace directives in its go.mod")
        sv = _staging_version(comp.version)
        _check_modules([Component(m, m, sv, ()) for m in staging], scratch)
        lines += ["", f"require {comp.module} {comp.version}", "", "replace ("]
        lines += [f"\t{m} => {m} {sv}" for m in staging]
        lines += [")"]
    else:
        lines += [f"require {comp.module} {comp.version}"]
    return "\n".join(lines) + "\n"


def _ldflags(comp: Component) -> str:
    flags = ["-s", "-w", *comp.ldflags]
    if comp.module == "k8s.io/kubernetes":
        # Without these /version reports v0.0.0-master, which trips version-skew and
        # compatibility-version checks.
        major, minor = comp.version.removeprefix("v").split(".")[:2]
        date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [
                f"-X {pkg}.gitVersion={comp.version}",
                f"-X {pkg}.gitMajor={major}",
                f"-X {pkg}.gitMinor={minor}",
                f"-X {pkg}.gitTreeState=clean",
                f"-X {pkg}.buildDate={date}",
            ]
    return " ".join(flags)


def _run_build(comp: Component, workdir: Path, outdir: Path, log_path: Path, log: Log) -> None:
    # One package: name the output explicitly (go would call go.etcd.io/etcd/server/v3 "server").
    out = f"{outdir}/{comp.binaries[0]}" if len(comp.packages) == 1 else f"{outdir}/"
    cmd = ["go", "build", "-v", "-trimpath", f"-ldflags={_ldflags(comp)}", "-o", out, *comp.packages]
    start = time.monotonic()
    with log_path.open("w") as logf:
        logf.write("$ " + " ".join(cmd) + "\n")
        logf.flush()
        proc = subprocess.Popen(cmd, cwd=workdir, env=_go_env(), stdout=logf, stderr=subprocess.STDOUT)
        try:
            next_note = start + 60
            while proc.poll() is None:
                time.sleep(1)
                if time.monotonic() >= next_note:
                    next_note += 60
                    n = sum(1 for _ in log_path.open()) - 1
                    log(f"    ... {comp.name}: {n} packages compiled, {time.monotonic() - start:.0f}s")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        output = log_path.read_text()
        lines = [ln for ln in output.splitlines()[1:] if not re.fullmatch(r"[\w./~-]+", ln)]
        msg = _explain_go_failure(cmd[1:], "\n".join(lines) or output)
        raise BuildError(f"building {comp.module}@{comp.version} failed ({', '.join(comp.binaries)}): {msg}\n"
                         f"full log: {log_path}")


def _version_check(path: Path, version: str) -> None:
    args = _VERSION_ARGS.get(path.name, ["--version"])
    try:
        out = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise BuildError(f"built {path} does not run: {exc}") from exc
    text = out.stdout + out.stderr
    if version.removeprefix("v") not in text:
        raise BuildError(f"{path} {' '.join(args)} does not report {version}: {text.strip()[:300]}")


@contextlib.contextmanager
def _locked(directory: Path, log: Log) -> Iterator[None]:
    # Several `make test` runs may share the cache; one builds, the others wait and reuse.
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"==> another build holds {directory}/.lock; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _say(msg: str) -> None:
    print(msg, flush=True)  # progress must show up at once, also when piped into a log file


def build(force: bool = False, log: Log = _say) -> Path:
    """Build every missing component into its directory, link bin_dir(); return bin_dir(). BuildError."""
    directory = bin_dir()
    if not force and not missing():
        log(f"==> k8s binaries up to date in {directory}")
        return directory
    todo = [c for c in COMPONENTS if force or c.binaries[0] in missing()]
    go_version = ""
    total = time.monotonic()
    for comp in todo:
        cdir = component_dir(comp)
        with _locked(cdir, log):
            manifest = _read_manifest(cdir)
            if not force and _component_built(cdir, manifest, comp):
                continue  # built by someone else while we waited for the lock
            if not force and not _override() and _adopt(comp, cdir, manifest, log):
                continue
            if not go_version:
                go_version = check_go()
                rest = [c for c in todo if force or not _component_built(component_dir(c), _read_manifest(
                    component_dir(c)), c)]
                log(f"==> building {', '.join(b for c in rest for b in c.binaries)} with {go_version}")
                _check_modules(rest, cdir)
            _build_component(comp, cdir, manifest, go_version, log)
    _link_view(log)
    log(f"==> done in {time.monotonic() - total:.0f}s: {directory}")
    return directory


def _build_component(comp: Component, directory: Path, manifest: dict[str, Any], go_version: str,
                     log: Log) -> None:
    build_root = directory / ".build"
    build_root.mkdir(exist_ok=True)
    start = time.monotonic()
    log(f"==> {comp.name} {comp.module}@{comp.version} into {directory}")
    workdir = build_root / comp.name
    workdir.mkdir(exist_ok=True)
    (workdir / "go.mod").write_text(_wrapper_gomod(comp, build_root))
    with tempfile.TemporaryDirectory(dir=build_root, prefix=f"out-{comp.name}-") as tmp:
        _run_build(comp, workdir, Path(tmp), build_root / f"{comp.name}.log", log)
        for name in comp.binaries:
            _version_check(Path(tmp) / name, comp.version)
            os.replace(Path(tmp) / name, directory / name)  # atomic: no half-written binary
    _copy_assets(comp, directory, build_root)
    seconds = round(time.monotonic() - start, 1)
    manifest.setdefault("components", {})[comp.name] = {
        "module": comp.module,
        "version": comp.version,
        "binaries": list(comp.binaries),
        "go": go_version,
        "build_seconds": seconds,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"    built {', '.join(comp.binaries)} in {seconds:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m railnet.dev.k8sbin", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build missing binaries (no-op when built)")
    b.add_argument("--force", action="store_true", help="rebuild even if present")
    sub.add_parser("path", help="print the binary directory")
    sub.add_parser("status", help="show pinned versions and which binaries are built")
    args = parser.parse_args(argv)
    if args.cmd == "path":
        print(bin_dir())
        return 0
    if args.cmd == "status":
        directory = bin_dir()
        absent = set(missing())
        for comp in COMPONENTS:
            for name in comp.binaries:
                state = "missing" if name in absent else "built"
                print(f"{name:24} {comp.module + '@' + comp.version:44} {state}  {component_dir(comp)}")
        print(f"directory: {directory}")
        return 1 if absent else 0
    try:
        build(force=args.force)
    except BuildError as exc:
        print(f"railnet.dev.k8sbin: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("railnet.dev.k8sbin: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
