"""Compile a small C source into a shared library, once per machine, and load it.

The library is cached under ``$SEMARC_CACHE/native/<key>/`` (default
``~/.cache/semarc``; a read-only home compiles into a temporary folder). The key
covers the source, the compiler and its version, the flags and the CPU's
feature flags, so a change of any of them compiles anew. Concurrent builds race
harmlessly: each compiles into its own folder and the first rename wins.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor()


def build(name: str, src: str, flags: list[str]) -> ctypes.CDLL:
    """The shared library ``name.so`` compiled from ``src`` with ``flags`` (plus
    ``-fPIC -shared -lm``) by ``$CC``, else ``cc`` or ``gcc``. Raises
    RuntimeError without a compiler or when the compiler fails."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc, gcc or $CC)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\n".join([src, cc, version, " ".join(flags), _cpu_flags()]).encode()).hexdigest()[:20]
    root = os.environ.get("SEMARC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "semarc")
    try:
        os.makedirs(root, exist_ok=True)
    except OSError:  # a read-only home: compile into a temporary folder, uncached
        root = tempfile.mkdtemp(prefix="semarc-native-")
    folder = os.path.join(root, "native", key)
    so = os.path.join(folder, f"{name}.so")
    if not os.path.exists(so):
        tmp = tempfile.mkdtemp(dir=root)
        try:
            with open(os.path.join(tmp, f"{name}.c"), "w") as f:
                f.write(src)
            r = subprocess.run([cc, *flags, "-fPIC", "-shared", "-o", os.path.join(tmp, f"{name}.so"),
                                os.path.join(tmp, f"{name}.c"), "-lm"], capture_output=True, text=True, timeout=300)
            if r.returncode:
                raise RuntimeError(f"{cc} failed: {r.stderr.strip()[-500:]}")
            os.makedirs(os.path.dirname(folder), exist_ok=True)
            try:
                os.rename(tmp, folder)
            except OSError:  # another process finished first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ctypes.CDLL(so)


class Lazy:
    """A library built on first use by ``make()``, once per process (thread
    safe; no lock once loaded). ``get()`` is None where it cannot be had (no
    compiler, another CPU, or turned off by the environment variable ``off``
    set to ``off_value``), and ``error`` then says why."""

    def __init__(self, make, off: str, off_value: str) -> None:
        self._make, self._off, self._off_value = make, off, off_value
        self._lock = threading.Lock()
        self.lib = None
        self.error: str | None = None

    def get(self):
        if self.lib is not None:
            return self.lib
        with self._lock:
            if self.lib is None and self.error is None:
                if os.environ.get(self._off) == self._off_value:
                    self.error = f"turned off by {self._off}={self._off_value}"
                else:
                    try:
                        self.lib = self._make()
                    except Exception as e:  # callers fall back to their portable path
                        self.error = f"{type(e).__name__}: {e}"
        return self.lib
