"""Where a `gptjax eval` command spends its time, and the persistent compilation cache that shortens it.

A cold evaluation of a small model is dominated by fixed costs, not by scoring: starting Python and importing
JAX, reading the model, and tracing + compiling the scorer's programs (bench/README.md has the profile).
`PhaseTimer` measures each phase and prints them at the end; compile time is what JAX itself reports, with
how many programs came from the persistent cache. `enable_compilation_cache` points JAX at that cache: the
first run of a model compiles and stores its programs, later runs (any process) load them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax

from gptjax.paths import local_cache_dir

# What JAX reports for each program it builds: tracing to a jaxpr, lowering to MLIR, and XLA compilation or
# loading from the persistent cache.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_ENV = "GPTJAX_COMPILATION_CACHE"  # a directory, or "off"
# The cache evicts least recently used programs beyond this size. A bounded cache also makes JAX take a file
# lock around every read and write, which is what keeps concurrent processes from reading half-written files.
CACHE_MAX_BYTES = 2 << 30


def default_compilation_cache() -> str:
    """`$GPTJAX_COMPILATION_CACHE`, else <local cache dir>/jax-compilation (gptjax.paths.local_cache_dir)."""
    return os.environ.get(CACHE_ENV) or str(local_cache_dir() / "jax-compilation")


def enable_compilation_cache(directory: str | Path) -> None:
    """Store and reuse every compiled program in `directory` (call before the first compilation); "off"
    leaves JAX's cache disabled."""
    if str(directory) == "off":
        return
    jax.config.update("jax_compilation_cache_dir", str(Path(directory).expanduser()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the scorer's programs take < 1 s
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux's /proc, 10 ms resolution), so Python's start-up and
    the imports count too; None where /proc is not available."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


class PhaseTimer:
    """Wall time of named phases, plus JAX's compile time and persistent-cache hits while it is open.

    Use as a context manager around the command; `with timer.phase(name):` around each phase.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.compile_seconds = 0.0
        self.programs = 0
        self.cache_hits = 0
        self.started = seconds_since_process_start()

    def _on_duration(self, event: str, duration: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            self.compile_seconds += duration
            self.programs += event == COMPILE_EVENTS[-1]

    def _on_event(self, event: str, **_: Any) -> None:
        self.cache_hits += event == CACHE_HIT_EVENT

    def __enter__(self) -> PhaseTimer:
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc: object) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_duration)
        jax.monitoring.unregister_event_listener(self._on_event)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        """One line: start-up (process start to the first phase), each phase, compile time within them, and
        the total since the process started."""
        parts = [f"start-up {self.started:.2f}s"] if self.started is not None else []
        parts += [f"{name} {seconds:.2f}s" for name, seconds in self.seconds.items()]
        if self.programs:
            parts.append(
                f"(of which tracing + compiling {self.compile_seconds:.2f}s: {self.programs} programs, "
                f"{self.cache_hits} from the compilation cache)"
            )
        total = seconds_since_process_start()
        if total is not None:
            parts.append(f"total {total:.2f}s")
        return "time: " + ", ".join(parts)
