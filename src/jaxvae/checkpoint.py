"""Orbax checkpoints of a run: parameters, optimiser state, step, RNG and data position.

Each checkpoint is a composite of three items so that inference can read the parameters alone:
  params  the model's nnx.State
  train   {"opt_state", "step", "key"}
  data    the data iterator's JSON state
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxvae.run import CHECKPOINTS, RunError


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """Save and restore a run's training state (a thin layer over ocp.CheckpointManager)."""

    def __init__(self, run_dir: Path, keep: int = 3, read_only: bool = False):
        self.directory = Path(run_dir).absolute() / CHECKPOINTS
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: dict, data_state: dict) -> None:
        train = {k: state[k] for k in ("opt_state", "step", "key")}
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            train=ocp.args.StandardSave(train),
            data=ocp.args.JsonSave(data_state)))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, template: dict, step: int | None = None) -> tuple[dict, dict]:
        """Restore the full training state shaped like `template`, and the data state."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise RunError(f"no checkpoint in {self.directory}")
        train = {k: template[k] for k in ("opt_state", "step", "key")}
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(template["params"])),
            train=ocp.args.StandardRestore(_abstract(train)),
            data=ocp.args.JsonRestore()))
        return {"params": out["params"], **out["train"]}, dict(out["data"])

    def restore_params(self, params_template, step: int | None = None):
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise RunError(f"no checkpoint in {self.directory}: was the run interrupted before its first save?")
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(params_template))))
        return out["params"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
