"""NVRTC through ctypes: compile CUDA C for a GPU architecture with no GPU, no driver and no CuPy.

The tests check that ``backends/dsnt_cupy/dsnt_kernels.cu`` compiles for real GPU targets on
machines without a GPU. NVRTC is a plain shared library (``libnvrtc.so``), shipped on its own
by the ``nvidia-cuda-nvrtc-cu12`` wheel (in the ``test`` extra), so this module loads it and
calls its C API directly: ``nvrtcCreateProgram``, ``nvrtcAddNameExpression``,
``nvrtcCompileProgram``, ``nvrtcGetProgramLog``, ``nvrtcGetCUBIN``, ``nvrtcGetPTX``,
``nvrtcGetLoweredName``, ``nvrtcDestroyProgram``.

* `load`: the library, found in the wheel (``site-packages/nvidia/*/lib``), in ``$CUDA_HOME``
  or on the loader's path; `NvrtcUnavailable` says where it looked;
* `compile_program`: one compilation, returning a `Compiled` (cubin, PTX, lowered names, log),
  or raising `CompileError` with NVRTC's log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CompileError", "Compiled", "NvrtcUnavailable", "compile_program", "load", "version"]

NVRTC_SUCCESS = 0


class NvrtcUnavailable(RuntimeError):
    """NVRTC's shared library cannot be found or loaded here."""


class CompileError(RuntimeError):
    """The source did not compile; ``log`` holds NVRTC's messages."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n{log}")
        self.log = log


@dataclass(frozen=True)
class Compiled:
    """One successful compilation."""

    cubin: bytes
    ptx: str
    lowered_names: dict[str, str] = field(default_factory=dict)
    log: str = ""


def _candidates() -> list[Path]:
    """Where ``libnvrtc.so`` may be: the NVIDIA wheels first, then ``$CUDA_HOME`` / ``$CUDA_PATH``."""
    folders: list[Path] = []
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:  # nvidia/cuda_nvrtc/lib (CUDA 12), nvidia/cu13/lib (CUDA 13)
            folders += sorted(Path(root).glob("*/lib"))
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            folders += [Path(os.environ[variable]) / "lib64", Path(os.environ[variable]) / "lib"]
    found = []
    for folder in folders:
        for path in sorted(folder.glob("libnvrtc.so*"), reverse=True):  # libnvrtc.so.13 before .so.12
            if ".alt." not in path.name and "builtins" not in path.name:
                found.append(path)
    return found


@functools.cache
def load() -> ctypes.CDLL:
    """NVRTC's shared library, with the argument and result types of the functions used here.

    Raises
    ------
    NvrtcUnavailable
        Where no ``libnvrtc`` can be loaded, with the places tried.
    """
    tried = [str(path) for path in _candidates()]
    system = ctypes.util.find_library("nvrtc")
    if system is not None:
        tried.append(system)
    errors = []
    for name in tried:
        try:
            library = ctypes.CDLL(name)
            break
        except OSError as error:
            errors.append(f"{name}: {error}")
    else:
        where = (
            "; ".join(errors)
            if errors
            else "no libnvrtc.so in site-packages/nvidia/*/lib, $CUDA_HOME or the loader path"
        )
        raise NvrtcUnavailable(f"NVRTC cannot be loaded ({where}); pip install nvidia-cuda-nvrtc-cu12")
    program, program_p, size_p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)
    strings = ctypes.POINTER(ctypes.c_char_p)
    signatures = {
        "nvrtcVersion": [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)],
        "nvrtcCreateProgram": [program_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, strings, strings],
        "nvrtcAddNameExpression": [program, ctypes.c_char_p],
        "nvrtcCompileProgram": [program, ctypes.c_int, strings],
        "nvrtcGetProgramLogSize": [program, size_p],
        "nvrtcGetProgramLog": [program, ctypes.c_char_p],
        "nvrtcGetCUBINSize": [program, size_p],
        "nvrtcGetCUBIN": [program, ctypes.c_char_p],
        "nvrtcGetPTXSize": [program, size_p],
        "nvrtcGetPTX": [program, ctypes.c_char_p],
        "nvrtcGetLoweredName": [program, ctypes.c_char_p, strings],
        "nvrtcDestroyProgram": [program_p],
    }
    for name, argtypes in signatures.items():
        function = getattr(library, name)
        function.argtypes, function.restype = argtypes, ctypes.c_int
    library.nvrtcGetErrorString.argtypes, library.nvrtcGetErrorString.restype = [ctypes.c_int], ctypes.c_char_p
    return library


def _check(library: ctypes.CDLL, status: int, call: str) -> None:
    if status != NVRTC_SUCCESS:
        raise RuntimeError(f"{call} failed: {library.nvrtcGetErrorString(status).decode()} ({status})")


def version() -> tuple[int, int]:
    """NVRTC's ``(major, minor)`` version."""
    library = load()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(library, library.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def _read(library: ctypes.CDLL, program: ctypes.c_void_p, what: str) -> bytes:
    """A result of the program (``"ProgramLog"``, ``"CUBIN"``, ``"PTX"``) through its size and getter."""
    size = ctypes.c_size_t()
    _check(library, getattr(library, f"nvrtcGet{what}Size")(program, ctypes.byref(size)), f"nvrtcGet{what}Size")
    buffer = ctypes.create_string_buffer(size.value)
    _check(library, getattr(library, f"nvrtcGet{what}")(program, buffer), f"nvrtcGet{what}")
    return buffer.raw[: size.value]


def _text(data: bytes) -> str:
    return data.rstrip(b"\0").decode(errors="replace")


def compile_program(source: str, name: str, options: Sequence[str], name_expressions: Sequence[str] = ()) -> Compiled:
    """Compile ``source`` with NVRTC.

    Parameters
    ----------
    source : str
        CUDA C++ source.
    name : str
        The file name the messages refer to.
    options : sequence of str
        NVRTC options; ``--gpu-architecture=sm_XX`` (a real architecture) gives a cubin.
    name_expressions : sequence of str
        Kernels to instantiate (``"kernel<float>"``); their mangled names come back.

    Returns
    -------
    Compiled
        The cubin (empty for a virtual ``compute_XX`` target), the PTX, the lowered names and the log.

    Raises
    ------
    CompileError
        If the source does not compile, with NVRTC's log.
    NvrtcUnavailable
        If NVRTC cannot be loaded.
    """
    library = load()
    program = ctypes.c_void_p()
    create = library.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None)
    _check(library, create, "nvrtcCreateProgram")
    try:
        for expression in name_expressions:
            status = library.nvrtcAddNameExpression(program, expression.encode())
            _check(library, status, f"nvrtcAddNameExpression({expression!r})")
        encoded = [option.encode() for option in options]
        status = library.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
        log = _text(_read(library, program, "ProgramLog"))
        if status != NVRTC_SUCCESS:
            message = library.nvrtcGetErrorString(status).decode()
            raise CompileError(f"NVRTC could not compile {name} ({message}) with options {list(options)}:", log)
        lowered = {}
        for expression in name_expressions:
            mangled = ctypes.c_char_p()
            status = library.nvrtcGetLoweredName(program, expression.encode(), ctypes.byref(mangled))
            _check(library, status, f"nvrtcGetLoweredName({expression!r})")
            lowered[expression] = (mangled.value or b"").decode()
        cubin = _read(library, program, "CUBIN") if any("sm_" in option for option in options) else b""
        return Compiled(cubin=cubin, ptx=_text(_read(library, program, "PTX")), lowered_names=lowered, log=log)
    finally:
        library.nvrtcDestroyProgram(ctypes.byref(program))
