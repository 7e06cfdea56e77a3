"""The railnet image built here, without a registry: what deploy/image/Containerfile builds, made from
Debian packages, PyPI wheels and this checkout, for the dev cluster's real node.

    python -m railnet.dev.railnet_image build                     # cached; prints ref, archive, size
    python -m railnet.dev.railnet_image import --address <containerd.sock>

Three layers, each cached on its own key, so editing railnet rebuilds only the top one:

1. base: Debian bookworm (`mmdebstrap --variant=essential` + python3), a `railnet` user 65532;
2. deps: railnet's dependencies (pyproject: the core, `kube` and `scheduler` extras) as manylinux
   wheels for CPython 3.11 from PyPI, installed with `pip --target` into /opt/railnet/site-packages;
3. railnet: this checkout's packages (with the generated kubelet gRPC stubs) and the native CNI
   shim compiled static, so the DaemonSet can copy it onto any node: no Python on the host.

Tagged `railnet.local/railnet:<key>`; runs `python3 -m railnet.cli` as uid 65532 unless the pod
says otherwise (the node agent runs as root with capabilities; docs/install.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Final

from railnet.dev import images
from railnet.dev.images import Image, ImageError, Log, _locked, _run, _say, write_oci_archive

REPO: Final = Path(__file__).resolve().parents[2]
PACKAGES: Final = ("cni", "ipam", "netmanager", "scheduler", "railnet", "jobs")
SUITE: Final = "bookworm"  # python3 is 3.11 there: the wheels below are for cp311
BASE_PACKAGES: Final = ("python3", "libstdc++6")  # libstdc++6: google-re2 (cel-python, the scheduler)
EXTRAS: Final = ("kube", "scheduler")
SITE: Final = "opt/railnet/site-packages"
USER: Final = "65532:65532"
WHEEL_PLATFORMS: Final = ("manylinux_2_28_x86_64", "manylinux2014_x86_64")  # bookworm has glibc 2.36
REPOSITORY: Final = "railnet.local/railnet"


def requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return sorted(set(reqs))


def source_files() -> list[Path]:
    """What goes into the railnet layer: the packages' files git knows (tracked or new, not ignored),
    plus the generated gRPC stubs, which are ignored on purpose."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", "--", *PACKAGES], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    files = {REPO / name for name in out.split("\0") if name.endswith((".py", ".c", ".json", ".yaml", ".txt"))}
    gen = REPO / "netmanager" / "kubelet" / "gen"
    files |= {p for p in gen.glob("*.py")}
    return sorted(p for p in files if p.is_file() and "__pycache__" not in p.parts)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def base_key() -> str:
    return _digest(b"base v1", SUITE.encode(), " ".join(BASE_PACKAGES).encode(), USER.encode())


def deps_key() -> str:
    return _digest(b"deps v2", "\n".join(requirements()).encode(), " ".join(WHEEL_PLATFORMS).encode())


def source_key(files: list[Path]) -> str:
    return _digest(b"src v2", *(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() for p in files))


def image_ref(files: list[Path] | None = None) -> str:
    files = source_files() if files is None else files
    return f"{REPOSITORY}:{_digest(base_key().encode(), deps_key().encode(), source_key(files).encode())}"


def _dir_layer(root: Path, out: Path) -> Path:
    """Every file under `root` (paths relative to it), owned by root, no timestamps: reproducible."""
    with tarfile.open(out, "w") as tar:
        for path in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if path.is_file() and not path.is_symlink():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return out


def _compile(site: Path) -> None:
    """Bytecode in the image (CPython 3.11 here and there): the agent starts without compiling ~40
    packages. unchecked-hash: the files never change in an image, and their mtimes are 0."""
    _run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", str(site)],
         600, "compiling the image's Python files")


def _base(cache: Path, log: Log) -> Path:
    out = cache / f"railnet-base-{base_key()}.tar"
    if out.is_file():
        return out
    log(f"==> railnet image: base layer (mmdebstrap {SUITE} + {', '.join(BASE_PACKAGES)})")
    tmp = out.with_name(f".{out.stem}.tmp.tar")  # mmdebstrap picks the output format by the suffix
    excludes = [f"--dpkgopt=path-exclude=/usr/share/{p}/*" for p in ("doc", "man", "locale", "info")]
    user = ("echo 'railnet:x:65532:65532:railnet:/nonexistent:/usr/sbin/nologin' >> \"$1/etc/passwd\"; "
            "echo 'railnet:x:65532:' >> \"$1/etc/group\"")
    _run(["mmdebstrap", "--mode=root", "--variant=essential", f"--include={','.join(BASE_PACKAGES)}", *excludes,
          f"--customize-hook={user}", "--customize-hook=rm -rf \"$1\"/var/cache/apt/* \"$1\"/var/lib/apt/lists/*",
          SUITE, str(tmp)], 1200, "building the railnet image's base root filesystem")
    os.replace(tmp, out)
    return out


def _deps(cache: Path, log: Log) -> Path:
    out = cache / f"railnet-deps-{deps_key()}.tar"
    if out.is_file():
        return out
    log(f"==> railnet image: dependency layer ({len(requirements())} requirements, wheels from PyPI)")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        site = Path(tmp) / "root" / SITE
        platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
              "--target", str(site), "--only-binary=:all:", *platforms, "--python-version", "3.11",
              "--implementation", "cp", "--abi", "cp311", *requirements()], 900,
             "installing railnet's dependencies from PyPI")
        shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with this machine's interpreter
        _compile(site)
        _dir_layer(Path(tmp) / "root", Path(tmp) / "layer.tar")
        os.replace(Path(tmp) / "layer.tar", out)
    return out


def _railnet(cache: Path, files: list[Path], log: Log) -> Path:
    out = cache / f"railnet-src-{source_key(files)}.tar"
    if out.is_file():
        return out
    log(f"==> railnet image: railnet layer ({len(files)} files from {REPO}, static native shim)")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        site = Path(tmp) / "root" / SITE
        for path in files:
            target = site / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        shim = site / "cni" / "native" / "railnet-shim"
        # static: the DaemonSet copies it to hosts whose libc nobody knows
        _run(["cc", "-static", "-O2", "-s", "-Wall", "-o", str(shim), str(REPO / "cni" / "native" / "shim.c")], 300,
             "compiling the static native CNI shim")
        shim.chmod(0o755)
        _compile(site)
        _dir_layer(Path(tmp) / "root", Path(tmp) / "layer.tar")
        os.replace(Path(tmp) / "layer.tar", out)
    return out


def _prune(cache: Path, keep: set[Path]) -> None:
    """Earlier checkouts' images and railnet layers (300 MB each): only the newest is kept."""
    for path in [*cache.glob("railnet-src-*.tar"), *cache.glob("railnet-*.oci.tar")]:
        if path not in keep:
            path.unlink(missing_ok=True)


def build(log: Log = _say) -> Image:
    """The image archive for this checkout (cached per layer and per image)."""
    files = source_files()
    ref = image_ref(files)
    with _locked(log) as cache:
        out = cache / f"railnet-{ref.rsplit(':', 1)[1]}.oci.tar"
        if out.is_file():
            return Image(ref, out)
        start = time.monotonic()
        layers = [_base(cache, log), _deps(cache, log), _railnet(cache, files, log)]
        write_oci_archive(layers, ref, out, {
            "Entrypoint": ["python3", "-m", "railnet.cli"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    f"PYTHONPATH=/{SITE}", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
            "User": USER,
            "Labels": {"org.opencontainers.image.source": "https://github.com/railnet/railnet",
                       "org.opencontainers.image.title": "railnet"},
        })
        _prune(cache, keep={out, layers[2]})
        log(f"==> built {ref} in {time.monotonic() - start:.0f}s ({out.stat().st_size / 1e6:.0f} MB) -> {out}")
        return Image(ref, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m railnet.dev.railnet_image", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the image archive (no-op when cached)")
    imp = sub.add_parser("import", help="build if needed, then import into a containerd's k8s.io namespace")
    imp.add_argument("--address", type=Path, required=True, help="containerd socket")
    imp.add_argument("--ctr", type=Path, help="ctr binary (default: the one k8sbin built)")
    args = parser.parse_args(argv)
    try:
        image = build()
        if args.cmd == "import":
            from railnet.dev import k8sbin

            images.import_image(image, args.ctr or k8sbin.binary("ctr"), args.address)
            print(f"imported {image.ref}")
        else:
            print(f"{image.ref}  {image.archive}  {image.archive.stat().st_size / 1e6:.0f} MB")
    except ImageError as exc:
        print(f"railnet image: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
