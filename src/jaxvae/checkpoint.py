"""Orbax checkpoints of a run: parameters, optimiser state, step, RNG and data position.

Each checkpoint is a composite of four items (five with --ema) so that inference can read the
parameters alone:
  params     the model's nnx.State
  ema        with --ema: the moving average of params, same tree; what inference reads when present
  train      every other entry of the train state (opt_state, step, key, guard counters)
  data       the data iterator's JSON state
  integrity  JSON {"params": sha256, "train": sha256[, "ema": sha256]} of the saved arrays

Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` only once
every item is on disk, so a crash leaves either a committed checkpoint or a temporary
directory, never half of one. The digests catch what the rename cannot: a committed checkpoint
whose files were later truncated, deleted or flipped reads back as "damaged". Retention: the
last `keep` steps plus the best by validation loss.

This module saves, restores, verifies and lists; what to do when that fails (fall back to an older
checkpoint, move a damaged one aside, clean up a torn save, roll back) is resilience.py's.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxvae.run import CHECKPOINTS, RunError

TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's suffix for a step that was never committed
PARAM_ITEMS = ("params", "ema")  # train-state entries saved as items of their own (inference reads them)


class _QuietOrbax(logging.Filter):
    """Orbax logs every failure as a traceback and every read-only open as a warning; jaxvae
    reports them itself in one line (CheckpointSaveError, damaged-checkpoint warnings)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL or "orbax" not in record.pathname


logging.getLogger("absl").addFilter(_QuietOrbax())


class CheckpointSaveError(RunError):
    """A checkpoint could not be written (disk full, unwritable, ...); earlier ones are intact."""


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def digest(tree) -> str:
    """sha256 over every leaf's dtype, shape and bytes, in tree order."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def all_finite(tree) -> bool:
    """True when every floating-point leaf of `tree` is finite (a host-side check)."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    return all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.inexact))


def parse_checkpoint(value: str | int) -> str | int:
    """--checkpoint best | latest | STEP -> "best", "latest" or the step as an int."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip()
    if text in ("best", "latest"):
        return text
    if text.isdigit():
        return int(text)
    raise RunError(f"--checkpoint must be best, latest or a step number, got {value!r}")


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """{"decoder.embed.kernel": shape, ...} of a parameter tree or of orbax's metadata of one."""
    tree = getattr(tree, "tree", tree)  # orbax's tree metadata wraps the tree
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = (".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path) for path, _ in leaves)
    return {name.removesuffix(".value"): tuple(leaf.shape) for name, (_, leaf) in zip(names, leaves, strict=True)}


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def first_line(e: BaseException) -> str:
    """An error's reason in one line (at most 300 characters), for messages that name a checkpoint."""
    text = (getattr(e, "strerror", None) or str(e) or type(e).__name__).strip().splitlines()[0]
    return text[:300]


class _Manager(ocp.CheckpointManager):
    """Orbax's manager reads every step's metrics when it opens the directory; a step whose files
    were overwritten with garbage would fail the opening itself (a UnicodeDecodeError deep in orbax).
    Here its metrics read as missing, and restoring it fails (resilience.restore_latest_good names
    it and falls back to the step before)."""

    def metrics(self, step: int):
        try:
            return super().metrics(step)
        except Exception:  # garbage where JSON should be: the step is damaged, found on restore
            return None


class Checkpointer:
    """Save and restore a run's training state (a thin layer over ocp.CheckpointManager).

    `read_only=True` (loading, sampling, evaluating) never writes to the run directory, and reads
    on this process alone: in a multi-process run, process 0 loads the finished run for its report
    while the others have already gone, so a read must not wait at a barrier for them.
    """

    def __init__(self, run_dir: Path, keep: int = 3, read_only: bool = False):
        self.run_dir = Path(run_dir).absolute()
        self.directory = self.run_dir / CHECKPOINTS
        self._alias_fd = None
        if not _utf8(str(self.run_dir)):
            self.directory = self._utf8_alias() / CHECKPOINTS
        latest_and_best = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            # best by validation loss; checkpoints saved without one (step 0, on a signal)
            # are kept only while they are among the latest
            policies.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        me = jax.process_index()
        alone = {"primary_host": me, "active_processes": {me}} if read_only else {}
        options = ocp.CheckpointManagerOptions(
            create=not read_only, read_only=read_only, preservation_policy=latest_and_best,
            best_fn=lambda m: m["val_loss"], best_mode="min", save_root_metadata=not read_only,
            multiprocessing_options=ocp.options.MultiprocessingOptions(**alone))
        try:
            self.manager = _Manager(self.directory, options=options)
        except OSError as e:
            raise CheckpointSaveError(f"cannot use checkpoint directory {self.directory}: {first_line(e)}") from e
        self._pending: int | None = None  # step of a save that may still be in flight

    def _utf8_alias(self) -> Path:
        """TensorStore takes UTF-8 paths only: a run folder whose name is not UTF-8 (bytes kept as
        surrogates by os.fsdecode) is reached through /proc/self/fd/N, an alias of an open descriptor."""
        if not Path("/proc/self/fd").is_dir():
            raise RunError(f"{self.run_dir} is not a UTF-8 path, which orbax cannot read or write here: "
                           "rename the folder")
        self._alias_fd = os.open(self.run_dir, os.O_RDONLY)
        return Path(f"/proc/self/fd/{self._alias_fd}")

    # --- what is on disk --------------------------------------------------------------------
    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the lowest validation loss (None when no checkpoint has one)."""
        return self.manager.best_step()

    def leftover_tmp(self) -> list[Path]:
        """Temporary directories of saves that never committed (a crash or kill -9 mid-save)."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if TMP_MARK in p.name)

    def reload(self) -> None:
        """Read the steps on disk again, after a change made behind the manager's back (a step moved)."""
        self.manager.reload()

    # --- saving -----------------------------------------------------------------------------
    def save(self, step: int, state: dict, data_state: dict, val_loss: float | None = None) -> None:
        """Start an (asynchronous) save of `state` as checkpoint `step`.

        Raises CheckpointSaveError if a previous save failed or this one cannot start, and
        RunError (without writing anything) if the parameters or optimiser state are not finite.
        """
        host = jax.device_get(state)  # one copy, reused for the finiteness check and the digests
        if not all_finite(host):
            raise RunError(f"refusing to save checkpoint {step}: the train state holds NaN or inf")
        train = {k: v for k, v in host.items() if k not in PARAM_ITEMS}
        own = [k for k in PARAM_ITEMS if k in state]
        metrics = {"val_loss": float(val_loss)} if val_loss is not None and np.isfinite(val_loss) else None
        self.wait()  # surfaces a failure of the previous save before starting this one
        try:
            self.manager.save(step, metrics=metrics, force=True, args=ocp.args.Composite(
                **{k: ocp.args.StandardSave(state[k]) for k in own},
                train=ocp.args.StandardSave({k: state[k] for k in train}),
                data=ocp.args.JsonSave(data_state),
                integrity=ocp.args.JsonSave({**{k: digest(host[k]) for k in own}, "train": digest(train)})))
        except Exception as e:  # orbax raises OSError, or wraps it, from its blocking part
            raise self._save_error(step, e) from e
        self._pending = step

    def wait(self) -> None:
        """Block until an asynchronous save has committed; raise CheckpointSaveError if it failed."""
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(step, e) from e
        if step is not None and not (self.directory / str(step)).is_dir():
            # orbax logs (and swallows) some failures of the commit; the rename is the truth
            raise self._save_error(step, RuntimeError("the save did not commit"))

    def _save_error(self, step: int | None, e: BaseException) -> CheckpointSaveError:
        self.manager.reload()  # forget the failed step; its tmp directory is removed on resume
        kept = ", ".join(map(str, self.steps())) or "none"
        return CheckpointSaveError(f"could not write checkpoint {step} in {self.directory}: {first_line(e)}; "
                                   f"earlier checkpoints are intact (steps {kept})")

    def delete(self, step: int) -> None:
        self.manager.delete(step)

    # --- restoring --------------------------------------------------------------------------
    def restore(self, template: dict, step: int | None = None) -> tuple[dict, dict]:
        """Restore the full training state shaped like `template`, and the data state."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise RunError(f"no checkpoint in {self.directory}")
        train = {k: v for k, v in template.items() if k not in PARAM_ITEMS}
        own = [k for k in PARAM_ITEMS if k in template]
        items = {**{k: ocp.args.StandardRestore(_abstract(template[k])) for k in own},
                 "train": ocp.args.StandardRestore(_abstract(train)),
                 "data": ocp.args.JsonRestore()}
        out = self._restore_verified(step, items)
        return {**{k: out[k] for k in own}, **out["train"]}, dict(out["data"])

    def read_params(self, step: int, params_template, ema: bool = True):
        """Checkpoint `step`'s parameters shaped like params_template: the EMA where the checkpoint holds
        one (--ema) and ema is set, the parameter set that inference, evaluation and export use; else the
        raw ones. Verified against their digest; raises whatever a damaged checkpoint raises."""
        name = "ema" if ema and (self.directory / str(step) / "ema").is_dir() else "params"
        return self._restore_verified(step, {name: ocp.args.StandardRestore(_abstract(params_template))})[name]

    def restore_params(self, params_template, step: int | None = None, ema: bool = True):
        """The parameters of checkpoint `step`; by default of the latest one that is not damaged
        (resilience.restore_selected, which warns about each damaged one). ema: see read_params."""
        if step is None:
            from jaxvae.resilience import restore_selected  # the fallback past damage is resilience's

            return restore_selected(self, params_template, "latest", ema)[2]
        self.check_model(params_template)
        return self.read_params(step, params_template, ema)

    def check_model(self, params_template) -> None:
        """Raise RunError (one line, before any restore) when the newest readable checkpoint holds
        parameters of other shapes than `params_template`: the run's config.json no longer describes
        its checkpoints (edited by hand?). A damaged step is skipped here; restoring names it."""
        for step in reversed(self.steps()):
            try:
                stored = _shapes(ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "params"))
            except Exception:  # unreadable metadata: damage, which restoring it reports
                continue
            wanted = _shapes(_abstract(params_template))
            if stored == wanted:
                return
            diff = sorted(set(stored.items()) ^ set(wanted.items()))
            name = diff[0][0]
            if name not in stored:  # a parameter this version's model has and the run's does not
                raise RunError(f"the checkpoints in {self.directory} have no {name}, which this version of jaxvae "
                               f"builds for {self.run_dir / 'config.json'}: the run was written by an older "
                               "version (or config.json was edited); train it again, or use the version "
                               "that wrote it")
            raise RunError(f"the checkpoints in {self.directory} hold a different model than "
                           f"{self.run_dir / 'config.json'} describes ({name}: saved {stored.get(name, 'absent')}, "
                           f"config gives {wanted.get(name, 'absent')}); was config.json edited? Restore its model "
                           "settings")

    def _restore_verified(self, step: int, items: dict) -> dict:
        has_digests = (self.directory / str(step) / "integrity").is_dir()
        if has_digests:
            items = {**items, "integrity": ocp.args.JsonRestore()}
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        if has_digests:
            for name in (*PARAM_ITEMS, "train"):
                if name in items and digest(out[name]) != out["integrity"][name]:
                    raise RunError(f"{name} do not match the digest written with them")
        return out

    def close(self) -> None:
        self.manager.close()
        if self._alias_fd is not None:
            os.close(self._alias_fd)
            self._alias_fd = None
