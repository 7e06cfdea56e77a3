"""Build hook: compile the native CNI shim (cni/native/shim.c) into the package.

Metadata lives in pyproject.toml. `build_py` also runs `cc` on the shim so that a normal
install (`pip install .`) and the editable one (`pip install -e .`) both ship
cni/native/railnet-shim, which `railnet install-cni --shim auto` then prefers. Without a C
compiler the build goes on with a warning and the Python shim stays the fallback.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

SOURCE = Path("cni", "native", "shim.c")
BINARY = Path("cni", "native", "railnet-shim")


class BuildPyWithShim(build_py):
    def run(self) -> None:
        super().run()
        # an editable install imports the package from the source tree: build the shim there
        out = BINARY if getattr(self, "editable_mode", False) else Path(self.build_lib, BINARY)
        if out != BINARY:
            out.unlink(missing_ok=True)  # never ship a stale shim from an earlier build
        cc = shlex.split(os.environ.get("CC") or "cc")
        if not cc or shutil.which(cc[0]) is None:
            self.warn(f"no C compiler ({' '.join(cc)}): the native CNI shim is not built; "
                      "`railnet install-cni` will install the Python shim")
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        try:
            subprocess.run([*cc, "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(SOURCE)], check=True)
            tmp.chmod(0o755)
            tmp.replace(out)
        except (OSError, subprocess.CalledProcessError) as exc:
            tmp.unlink(missing_ok=True)
            self.warn(f"building the native CNI shim failed ({exc}); `railnet install-cni` will install "
                      "the Python shim")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs: list[str] = super().get_outputs(include_bytecode)
        built = Path(self.build_lib, BINARY)
        if not getattr(self, "editable_mode", False) and built.is_file():
            outputs.append(str(built))
        return outputs


class BinaryDistribution(Distribution):
    """The wheel carries a compiled executable, so it is tagged for this platform."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_py": BuildPyWithShim}, distclass=BinaryDistribution)
