"""Checkpoints of the train state through orbax-checkpoint: the only module that imports orbax.

Saves are asynchronous and collective (every process calls `save`/`restore` with its shards). orbax writes
each step into a temporary directory and renames it only when every process has finished, so a process
killed mid-save leaves a temporary directory that `latest_step` never reports (and that is cleaned up the
next time the manager opens the directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint could not be restored; the message names the directory and step."""


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True) -> None:
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True, cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Start an (asynchronous) save of `state` at `step`; a no-op if that step is already saved."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore(self, step: int, target: Any) -> Any:
        """Restore onto `target`: a pytree of `jax.ShapeDtypeStruct`s whose shardings may describe a
        different mesh than the one that saved (orbax reshards on read)."""
        if step not in self._manager.all_steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; "
                                  f"available: {self.all_steps()}")
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as err:  # orbax raises many types; re-raise with the location named
            raise CheckpointError(f"checkpoint {self.directory / str(step)} could not be restored "
                                  f"({type(err).__name__}: {err}); delete it to resume from an earlier step, "
                                  f"available steps: {self.all_steps()}") from err

    def reached_preemption(self, step: int) -> bool:
        """True on every process at the same step once any process was told it will be preempted
        (multi-process runs; uses JAX's coordination service)."""
        return jax.process_count() > 1 and self._manager.reached_preemption(step)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
