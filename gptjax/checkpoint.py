"""Checkpoints of the train state through orbax-checkpoint: the only module that imports orbax.

Saves are asynchronous and collective (every process calls `save`/`restore` with its shards). orbax writes
each step into a temporary directory and renames it (on GCS: commits it) only when every process has
finished, so a process killed mid-save leaves a temporary directory that `latest_step` never reports (and
that is cleaned up the next time the manager opens the directory). Directories may be local or gs://.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from gptjax.errors import GptjaxError
from gptjax.rundir import PathLike, as_path, is_local


class CheckpointError(GptjaxError, RuntimeError):
    """A checkpoint could not be restored; the message names the directory and step."""


class Checkpointer:
    def __init__(self, directory: PathLike, keep: int = 3, async_save: bool = True) -> None:
        directory = as_path(directory)
        self.directory: epath.Path = directory.absolute() if is_local(directory) else directory
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True
        )
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

    def _check_step(self, step: int) -> None:
        if step not in self._manager.all_steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}")

    def _restoring(self, step: int, restore: Any) -> Any:
        self._check_step(step)
        try:
            return restore()
        except Exception as err:  # orbax raises many types; re-raise with the location named
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} could not be restored "
                f"({type(err).__name__}: {err}); delete it to resume from an earlier step, "
                f"available steps: {self.all_steps()}"
            ) from err

    def restore(self, step: int, target: Any) -> Any:
        """Restore onto `target`: a pytree of `jax.ShapeDtypeStruct`s whose shardings may describe a
        different mesh than the one that saved (orbax reshards on read)."""
        return self._restoring(step, lambda: self._manager.restore(step, args=ocp.args.StandardRestore(target)))

    def restore_subtree(self, step: int, target: dict[str, Any]) -> dict[str, Any]:
        """Restore only the top-level entries `target` names (e.g. {"params": ...} of a train state), so a
        reader needs no optimizer to describe the rest of what was saved."""
        args = ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
        )
        return self._restoring(step, lambda: self._reader.restore(step, args=args))

    @functools.cached_property
    def _reader(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            item_handlers=ocp.PyTreeCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(read_only=True),
        )

    def reached_preemption(self, step: int) -> bool:
        """True on every process at the same step once any process was told it will be preempted
        (multi-process runs; uses JAX's coordination service)."""
        return jax.process_count() > 1 and self._manager.reached_preemption(step)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
        if "_reader" in self.__dict__:
            self._reader.close()
