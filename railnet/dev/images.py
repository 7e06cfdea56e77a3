"""Container images for the real dev node, built locally: no registry is reachable where railnet is developed.

    python -m railnet.dev.images build              # build the pause and test images (cached)
    python -m railnet.dev.images import --address <containerd.sock>

Images are written as OCI image-layout tar archives into ~/.cache/railnet/images/ and imported into
containerd's `k8s.io` namespace with `ctr images import`, so kubelet finds them and never pulls:

* `registry.k8s.io/pause:3.10.2` — a tiny static C program (reaps zombies, exits on SIGTERM); the tag is
  the one the dev node's containerd config names as its sandbox image.
* `railnet.local/testbox:<key>` — a Debian bookworm root filesystem made by `mmdebstrap` from Debian
  packages (bash, coreutils, `ip`, Python 3), for test pods.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

PAUSE_IMAGE: Final = "registry.k8s.io/pause:3.10.2"  # containerd v2.4.2's default sandbox image
TESTBOX_SUITE: Final = "bookworm"
TESTBOX_PACKAGES: Final = ("iproute2", "python3", "procps")  # python3-minimal lacks http.*
TESTBOX_KEY: Final = hashlib.sha256(f"v2 {TESTBOX_SUITE} {' '.join(TESTBOX_PACKAGES)}".encode()).hexdigest()[:10]
TESTBOX_IMAGE: Final = f"railnet.local/testbox:{TESTBOX_KEY}"

Log = Callable[[str], None]

_PAUSE_C: Final = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void leave(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    struct sigaction term = {.sa_handler = leave}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &term, NULL);
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGCHLD, &child, NULL);
    for (;;) pause();
}
"""


class ImageError(RuntimeError):
    """An image could not be built or imported; the message says which command failed and why."""


def _say(msg: str) -> None:
    print(msg, flush=True)


def cache_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "railnet" / "images"


def _run(cmd: list[str], timeout: float, what: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise ImageError(f"{what}: `{cmd[0]}` is not installed (make sysdeps installs it)") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what}: `{' '.join(cmd)}` did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-15:])
        raise ImageError(f"{what}: `{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")
    return proc


@dataclass(frozen=True)
class Image:
    ref: str  # name:tag as kubelet/containerd see it
    archive: Path  # the OCI layout tar


# ------------------------------------------------------------------------------------ OCI layout


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_oci_archive(layer_tar: Path | list[Path], ref: str, out: Path, config: dict[str, Any]) -> Path:
    """Uncompressed layers (bottom first) + config + manifest + index, as an OCI image-layout tar `ctr` imports."""
    layers = [layer_tar] if isinstance(layer_tar, Path) else list(layer_tar)
    digests = [_sha256_file(layer) for layer in layers]
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in digests]},
    }
    config_blob = json.dumps(image_config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{hashlib.sha256(config_blob).hexdigest()}", "size": len(config_blob)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{d}", "size": layer.stat().st_size} for d, layer in zip(digests, layers, strict=True)],
    }
    manifest_blob = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": manifest["mediaType"],
            "digest": f"sha256:{hashlib.sha256(manifest_blob).hexdigest()}",
            "size": len(manifest_blob),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref},
        }],
    }
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))

        add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_bytes("index.json", json.dumps(index).encode())
        add_bytes(f"blobs/sha256/{hashlib.sha256(config_blob).hexdigest()}", config_blob)
        add_bytes(f"blobs/sha256/{hashlib.sha256(manifest_blob).hexdigest()}", manifest_blob)
        for digest, layer in dict(zip(digests, layers, strict=True)).items():  # a layer twice is one blob
            tar.add(layer, arcname=f"blobs/sha256/{digest}")
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------------------------------- builds


@contextlib.contextmanager
def _locked(log: Log) -> Iterator[Path]:
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    with (d / ".lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"==> another build holds {d}/.lock; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield d


def build_pause(log: Log = _say) -> Image:
    """The sandbox image: a static `pause` binary as the only file."""
    with _locked(log) as d:
        out = d / f"pause-{PAUSE_IMAGE.rsplit(':', 1)[1]}.oci.tar"
        if out.is_file():
            return Image(PAUSE_IMAGE, out)
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            src, binary = Path(tmp) / "pause.c", Path(tmp) / "pause"
            src.write_text(_PAUSE_C)
            _run(["cc", "-static", "-Os", "-s", "-o", str(binary), str(src)], 120, "building the pause binary")
            layer = Path(tmp) / "layer.tar"
            with tarfile.open(layer, "w") as tar:
                info = tar.gettarinfo(str(binary), arcname="pause")
                info.mtime, info.uid, info.gid, info.mode = 0, 0, 0, 0o755
                with binary.open("rb") as fh:
                    tar.addfile(info, fh)
            write_oci_archive(layer, PAUSE_IMAGE, out, {"Entrypoint": ["/pause"], "User": "65535:65535"})
        log(f"==> built {PAUSE_IMAGE} -> {out}")
        return Image(PAUSE_IMAGE, out)


def build_testbox(log: Log = _say) -> Image:
    """A Debian root filesystem with a shell, iproute2 and Python, from Debian packages (mmdebstrap)."""
    with _locked(log) as d:
        out = d / f"testbox-{TESTBOX_KEY}.oci.tar"
        if out.is_file():
            return Image(TESTBOX_IMAGE, out)
        log(f"==> building {TESTBOX_IMAGE} with mmdebstrap ({TESTBOX_SUITE} + {', '.join(TESTBOX_PACKAGES)}); "
            "about 2 minutes")
        start = time.monotonic()
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            excludes = [f"--dpkgopt=path-exclude=/usr/share/{p}/*" for p in ("doc", "man", "locale", "info")]
            _run(["mmdebstrap", "--mode=root", "--variant=essential", f"--include={','.join(TESTBOX_PACKAGES)}",
                  *excludes, TESTBOX_SUITE, str(rootfs)], 1200, "building the test image's root filesystem")
            write_oci_archive(rootfs, TESTBOX_IMAGE, out, {
                "Cmd": ["/bin/bash"],
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            })
        log(f"==> built {TESTBOX_IMAGE} in {time.monotonic() - start:.0f}s -> {out}")
        return Image(TESTBOX_IMAGE, out)


def build_all(log: Log = _say) -> list[Image]:
    return [build_pause(log), build_testbox(log)]


def import_image(image: Image, ctr: Path, address: Path, timeout: float = 300) -> None:
    """Import an archive into containerd's k8s.io namespace (unpacked for the overlayfs snapshotter)."""
    _run([str(ctr), "--address", str(address), "--namespace", "k8s.io", "images", "import",
          str(image.archive)], timeout, f"importing {image.ref}")
    listed = _run([str(ctr), "--address", str(address), "--namespace", "k8s.io", "images", "ls", "-q"], 60,
                  "listing images").stdout.split()
    if image.ref not in listed:
        raise ImageError(f"imported {image.archive} but containerd does not list {image.ref} (has: {listed})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="railnet dev-cluster image", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the pause and test images (no-op when cached)")
    imp = sub.add_parser("import", help="build if needed, then import into a containerd")
    imp.add_argument("--address", type=Path, required=True, help="containerd socket")
    imp.add_argument("--ctr", type=Path, help="ctr binary (default: the one k8sbin built)")
    args = parser.parse_args(argv)
    try:
        images = build_all()
        if args.cmd == "import":
            from railnet.dev import k8sbin

            ctr = args.ctr or k8sbin.binary("ctr")
            for image in images:
                import_image(image, ctr, args.address)
                print(f"imported {image.ref}")
        else:
            for image in images:
                print(f"{image.ref}  {image.archive}")
    except ImageError as exc:
        print(f"railnet dev-cluster image: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
