"""Build the compiled kernels of pyflowcore.

One Cython extension per flow family lives in ``pyflowcore/_kernels``; they
are compiled as C++ because the per-element math in ``csrc/*.h`` is written
as templates shared with the CUDA kernels.

OpenMP is used when a small probe program compiles and links with
``-fopenmp``; otherwise the kernels are built serially (``prange`` then runs
as a plain loop) and a message says so.

Development convenience: ``PYFLOWCORE_BUILD_ONLY=planar,radial`` restricts an
in-place build to the named kernel modules.
"""

import os
import subprocess
import sys
import tempfile
from glob import glob
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def openmp_flags():
    """Return (compile, link) flags enabling OpenMP, or ([], []) if unsupported."""
    if os.environ.get("PYFLOWCORE_NO_OPENMP"):
        return [], []
    cxx = os.environ.get("CXX", "c++")
    flag = "/openmp" if sys.platform == "win32" else "-fopenmp"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "probe.cpp")
        src.write_text(OPENMP_PROBE)
        exe = Path(tmp, "probe")
        try:
            res = subprocess.run([cxx, flag, str(src), "-o", str(exe)],
                                 capture_output=True, timeout=120)
            ok = res.returncode == 0 and subprocess.run([str(exe)], timeout=60).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    if not ok:
        print("pyflowcore: the compiler does not support OpenMP; building serial kernels",
              file=sys.stderr)
        return [], []
    return [flag], ([] if sys.platform == "win32" else [flag])


def extensions():
    omp_compile, omp_link = openmp_flags()
    # -fno-math-errno lets the compiler inline and vectorise sqrt and friends;
    # IEEE semantics (NaN propagation, signed zeros) are otherwise kept.
    compile_args = ["-O3", "-std=c++17", "-fno-math-errno", "-Wno-unused-function"]
    # -fopenmp-simd honours `#pragma omp simd` (csrc/pfc_vmath.h) even when
    # OpenMP itself is unavailable; it needs no runtime library.
    if sys.platform != "win32":
        compile_args.append("-fopenmp-simd")
    only = {s.strip() for s in os.environ.get("PYFLOWCORE_BUILD_ONLY", "").split(",") if s.strip()}
    exts = []
    for pyx in sorted(glob("pyflowcore/_kernels/*.pyx")):
        name = Path(pyx).stem
        if only and name not in only:
            continue
        exts.append(Extension(
            f"pyflowcore._kernels.{name}",
            [pyx],
            include_dirs=[str(CSRC), np.get_include()],
            # Rebuild when a shared header changes, not only the .pyx.
            depends=sorted(glob("csrc/*.h")),
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=compile_args + omp_compile,
            extra_link_args=omp_link,
            language="c++",
        ))
    return cythonize(
        exts,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


class BuildPyWithCsrc(build_py):
    """Ship ``csrc/`` inside the package so the CUDA path of an installed copy
    can compile the same sources at run time."""

    def run(self):
        super().run()
        target = Path(self.build_lib, "pyflowcore", "_csrc")
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted(CSRC.glob("*")):
            if src.suffix in (".h", ".cuh", ".cu"):
                self.copy_file(str(src), str(target / src.name))


setup(ext_modules=extensions(), cmdclass={"build_py": BuildPyWithCsrc})
