"""What keeps a long run alive: exact resume, a clean stop on a signal, recovery from non-finite
steps, and the way past damaged checkpoints. checkpoint.Checkpointer only saves, restores,
verifies and lists; every decision about what to do when that fails is made here.

  resume               continue a run from its latest good checkpoint, exactly where it was,
                       after removing torn saves (clean_tmp) and moving damaged ones aside (quarantine)
  restore_latest_good  the newest checkpoint that restores, with a warning for each damaged one
  restore_selected     the parameters of the best, the latest or a given checkpoint (loading a run)
  StopSignals          SIGTERM / SIGINT set a flag; the loop saves and raises Interrupted
  keep_if              the non-finite guard's select, used inside the jitted step
  roll_back            after --max-bad-steps skipped steps in a row: back to the last good checkpoint
                       with half the learning rate; the second time, stop with Diverged
  advise_resume        a failed save says how to continue the run once the cause is fixed

resume and roll_back return the train state replicated on the mesh, ready for the jitted step.
Orbax's own preemption hook needs jax.distributed, so the signal handling here is our own.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxvae import parallel
from jaxvae import run as run_lib
from jaxvae.checkpoint import Checkpointer, CheckpointSaveError, first_line, parse_checkpoint
from jaxvae.config import Config
from jaxvae.run import DAMAGED, RunError

# Settings a resume may change: none of them changes the model, the data or the trajectory.
RESUMABLE = ("steps", "log_every", "eval_every", "ckpt_every", "keep", "max_bad_steps", "early_stop")
MAX_ROLLBACKS = 1  # the second divergence stops the run
# After a failed save in this same process, orbax's writers of the other items may still be finishing
# inside its temporary directory: removing it is retried this many times, this many seconds apart.
TMP_REMOVE_TRIES, TMP_REMOVE_WAIT_S = 20, 0.1


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving; `exit_code` is the shell's 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class Diverged(RunError):
    """Non-finite steps came back after a rollback: the run stops at its last good checkpoint."""


def warn(message: str) -> None:
    print(f"jaxvae: warning: {message}", file=sys.stderr, flush=True)


# --- resume -------------------------------------------------------------------------------------
def config_changes(saved: Config, new: Config) -> dict[str, tuple]:
    """{key: (saved value, new value)} for the settings a resume may not change."""
    old, cur = saved.to_dict(), new.to_dict()
    return {k: (old.get(k), cur.get(k)) for k in sorted(set(old) | set(cur))
            if k not in RESUMABLE and old.get(k) != cur.get(k)}


def check_resumable(run_dir: Path, saved: Config, new: Config) -> None:
    changes = config_changes(saved, new)
    if changes:
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in changes.items())
        raise RunError(f"cannot resume {run_dir}: the config differs from its config.json in {listed}; "
                       f"a resume may only change {', '.join(RESUMABLE)}")


def finished(run_dir: Path, saved: Config, c: Config) -> tuple[dict, str] | None:
    """(summary, what to tell the user) when `--resume` would have nothing to do, else None.

    A run is finished when its summary.json and its last checkpoint are at c.steps, or it stopped early
    and the patience is unchanged; raising --steps (or changing --early-stop) extends it instead.
    """
    try:
        summary = run_lib.read_json(run_dir / run_lib.SUMMARY)
    except (OSError, ValueError):
        return None  # no summary: training never finished, so there is something to resume
    if not isinstance(summary, dict):
        return None
    stopped = summary.get("early_stopped_at")
    if stopped is not None and c.early_stop and c.early_stop == saved.early_stop:
        return summary, (f"{run_dir} is finished: it stopped early at step {stopped} and kept its best checkpoint, "
                         f"step {summary.get('best_step')}. To train on from there: jaxvae train --resume {run_dir} "
                         f"--early-stop 0 (or a larger patience)")
    if stopped is None and summary.get("steps") == c.steps and (run_dir / run_lib.CHECKPOINTS / str(c.steps)).is_dir():
        return summary, (f"{run_dir} is finished: it trained all {c.steps:,} steps. To extend it: "
                         f"jaxvae train --resume {run_dir} --steps {2 * c.steps}")
    return None


def resume_config(run: str, **conflicting: str | None) -> Config:
    """The config a `--resume RUN` starts from: the run's own, so only the flags given change it."""
    given = [f"--{k}" for k, v in conflicting.items() if v is not None]
    if given:
        raise RunError(f"--resume {run} takes the run's own config and directory; drop {', '.join(given)}")
    return run_lib.open_run(run)[1]


def check_resume(out: str | Path, c: Config) -> tuple[dict, str] | None:
    """Refuse (RunError) a resume of `out` with c unless c differs from its config only in RESUMABLE;
    then what `finished` says. Reads the run, never writes it."""
    run_dir, saved = run_lib.open_run(out)
    check_resumable(run_dir, saved, c)
    return finished(run_dir, saved, c)


def resume(ckpt: Checkpointer, run_dir: Path, c: Config, state: dict, batches, mesh: Mesh,
           say: Callable[[str], None]) -> tuple[dict, int]:
    """The train state, replicated on `mesh`, and the step to continue `run_dir` from; sets `batches`
    to its position. `state` is the fresh one: the shape of what is restored, and where a run without
    any committed checkpoint starts again.

    Removes temporary directories left by a crash mid-save (with a note), falls back past damaged
    checkpoints (moving them to checkpoints.damaged/), rewinds metrics.jsonl to the restored step
    and writes the (possibly extended) config.
    """
    removed = clean_tmp(ckpt)
    if removed:  # on stderr even with --quiet: files were deleted
        print(f"jaxvae: note: removed {len(removed)} unfinished checkpoint(s) left by an interrupted save: "
              f"{', '.join(removed)}", file=sys.stderr, flush=True)
    ckpt.check_model(state["params"])  # an edited config.json is not damage: refuse, move nothing aside
    step, restored = restore_latest_good(ckpt, lambda s: ckpt.restore(state, s),
                                         on_damaged=lambda s, _: quarantine(ckpt, s))
    if step is None:
        warn(f"{run_dir} has no committed checkpoint; starting it again from step 0")
        step = 0
    else:
        state, data_state = restored
        batches.set_state(data_state)
    if step > c.steps:
        raise RunError(f"{run_dir} is already at step {step}; --steps {c.steps} would go back (raise it to extend)")
    run_lib.truncate_metrics(run_dir, step)
    run_lib.write_json(run_dir / run_lib.CONFIG, c.to_dict())
    say(f"resuming {run_dir} from step {step} of {c.steps}")
    return parallel.replicate(state, mesh), step


# --- damaged and unfinished checkpoints ---------------------------------------------------------
def restore_latest_good(ckpt: Checkpointer, restore: Callable[[int], object],
                        on_damaged: Callable[[int, str], None] | None = None):
    """Call restore(step) from the newest checkpoint back until one works: (step, result).

    Each damaged checkpoint is reported by a warning that names it and passed to on_damaged.
    Raises RunError naming every failure when none can be restored; (None, None) if none exist.
    """
    failures = []
    for step in reversed(ckpt.steps()):
        try:
            result = restore(step)
        except Exception as e:  # a damaged checkpoint fails in many ways: read, decode, digest
            reason = first_line(e)
            failures.append(f"{step} ({reason})")
            older = [s for s in ckpt.steps() if s < step]
            warn(f"checkpoint {step} in {ckpt.directory} is damaged: {reason}; "
                 + (f"falling back to checkpoint {older[-1]}" if older else "no earlier checkpoint"))
            if on_damaged:
                on_damaged(step, reason)
            continue
        return step, result
    if failures:
        raise RunError(f"no loadable checkpoint in {ckpt.directory}: {'; '.join(failures)}")
    return None, None


def restore_selected(ckpt: Checkpointer, params_template, which: str | int = "best",
                     ema: bool = True) -> tuple[int, str, object]:
    """The parameters of the checkpoint `which` names: (step, how it was chosen, params).

    which: "best" (lowest validation loss; the latest when no checkpoint has one), "latest" (the
    newest that is not damaged) or a step number, which must exist. A damaged best checkpoint
    falls back to the latest good one, with a warning. ema: see Checkpointer.read_params.
    """
    which = parse_checkpoint(which)
    ckpt.check_model(params_template)
    steps = ckpt.steps()
    if not steps:
        raise RunError(f"no checkpoint in {ckpt.directory}: was the run interrupted before its first save?")

    def restore(step: int):
        return ckpt.read_params(step, params_template, ema)

    if isinstance(which, int):
        if which not in steps:
            raise RunError(f"no checkpoint at step {which} in {ckpt.directory}: it has steps "
                           f"{', '.join(map(str, steps))}")
        try:
            return which, f"step {which}", restore(which)
        except Exception as e:
            raise RunError(f"checkpoint {which} in {ckpt.directory} is damaged: {first_line(e)}") from None
    how = "latest"
    best = ckpt.best_step() if which == "best" else None
    if best is not None:
        try:
            return best, "best by validation loss", restore(best)
        except Exception as e:
            warn(f"the best checkpoint {best} in {ckpt.directory} is damaged: {first_line(e)}; "
                 "using the latest good one")
            how = "latest; the best one is damaged"
    elif which == "best":
        how = "latest; no checkpoint has a validation loss"
    step, params = restore_latest_good(ckpt, restore)
    return step, how, params


def quarantine(ckpt: Checkpointer, step: int) -> Path:
    """Move a damaged checkpoint out of the way (to RUN/checkpoints.damaged/) rather than delete it."""
    target_dir = ckpt.run_dir / DAMAGED
    target_dir.mkdir(exist_ok=True)
    target = target_dir / str(step)
    n = 1
    while target.exists():
        target, n = target_dir / f"{step}.{n}", n + 1
    shutil.move(str(ckpt.directory / str(step)), target)
    ckpt.reload()
    return target


def clean_tmp(ckpt: Checkpointer) -> list[str]:
    """Remove the temporary directories of saves that never committed; returns their names (for the
    caller's note)."""
    names = []
    for path in ckpt.leftover_tmp():
        for _ in range(TMP_REMOVE_TRIES):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            if not path.exists():
                names.append(path.name)
                break
            time.sleep(TMP_REMOVE_WAIT_S)
        else:
            warn(f"could not remove the unfinished checkpoint {path}")
    return names


def delete_after(ckpt: Checkpointer, step: int) -> list[int]:
    """Delete every checkpoint later than `step` (a rollback or an early stop abandons them)."""
    ckpt.wait()
    doomed = [s for s in ckpt.steps() if s > step]
    for s in doomed:
        ckpt.delete(s)
    return doomed


@contextlib.contextmanager
def advise_resume(ckpt: Checkpointer) -> Iterator[None]:
    """Within it, a failed save (CheckpointSaveError) also says how to continue the run once fixed."""
    try:
        yield
    except CheckpointSaveError as e:
        advice = f"once fixed, continue with `jaxvae train --resume {ckpt.run_dir}`"
        raise CheckpointSaveError(f"{e}; {advice}") from e.__cause__


# --- signals ------------------------------------------------------------------------------------
class StopSignals:
    """Within `with StopSignals() as stop:`, SIGTERM and SIGINT set `stop.received` instead of
    killing the process, so the loop can save and exit. A second signal stops without saving."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without saving")
        self.received = signum  # no printing here: the loop reports it, outside the handler

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def interrupted(stop: StopSignals, step: int, run_dir: Path) -> Interrupted:
    return Interrupted(f"stopped by {stop.name} at step {step}; checkpoint {step} saved. "
                       f"Resume with: jaxvae train --resume {run_dir}", stop.received)


# --- the non-finite guard (inside jit) ----------------------------------------------------------
def keep_if(ok: jax.Array, new, old):
    """`new` where ok, else `old`, leaf by leaf (a select, so a finite step is bitwise unchanged)."""
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


# --- rollback -----------------------------------------------------------------------------------
def roll_back(ckpt: Checkpointer, run_dir: Path, state: dict, step: int, mesh: Mesh) -> tuple[dict, int]:
    """Return to the last checkpoint before the current run of bad steps, with half the lr: the state,
    replicated on `mesh`, and its step.

    Checkpoints saved during the bad run are deleted and metrics.jsonl is rewound, so the run
    directory reads as if the bad steps never happened. The data iterator is not rewound: the
    batches that broke the run are not replayed. Raises Diverged the second time.
    """
    streak, rollbacks = int(state["bad_streak"]), int(state["rollbacks"])
    lr = float(state["opt_state"].hyperparams["learning_rate"] * state["lr_scale"])
    delete_after(ckpt, step - streak)
    good, restored = restore_latest_good(ckpt, lambda s: ckpt.restore(state, s)[0],
                                         on_damaged=lambda s, _: quarantine(ckpt, s))
    if good is None:
        raise Diverged(f"{streak} steps in a row with non-finite loss or gradients by step {step} "
                       f"(lr {lr:g}) and no good checkpoint to roll back to; lower --lr")
    run_lib.truncate_metrics(run_dir, good)
    if rollbacks >= MAX_ROLLBACKS:
        raise Diverged(f"training diverged again: {streak} steps in a row with non-finite loss or gradients "
                       f"by step {step} (lr {lr:g}) after {rollbacks} rollback(s). {run_dir} is rolled back "
                       f"to its last good checkpoint, step {good}; start again with a lower --lr "
                       f"(--overwrite), or --resume it to retry")
    warn(f"{streak} steps in a row with non-finite loss or gradients by step {step}: rolled back to "
         f"checkpoint {good} and halved the learning rate to {lr / 2:g}")
    restored["lr_scale"] = np.float32(state["lr_scale"]) * np.float32(0.5)
    restored["rollbacks"] = np.int32(rollbacks + 1)
    return parallel.replicate(restored, mesh), good
