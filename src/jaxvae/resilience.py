"""What keeps a long run alive: exact resume, a clean stop on a signal, and recovery from
non-finite steps.

  resume        continue a run from its latest good checkpoint, exactly where it was
  StopSignals   SIGTERM / SIGINT set a flag; the loop saves and raises Interrupted
  keep_if       the non-finite guard's select, used inside the jitted step
  roll_back     after --max-bad-steps skipped steps in a row: back to the last good checkpoint
                with half the learning rate; the second time, stop with Diverged

Orbax's own preemption hook needs jax.distributed, so the signal handling here is our own.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import run as run_lib
from jaxvae.checkpoint import Checkpointer, warn
from jaxvae.config import Config
from jaxvae.run import RunError

# Settings a resume may change: none of them changes the model, the data or the trajectory.
RESUMABLE = ("steps", "log_every", "eval_every", "ckpt_every", "keep", "max_bad_steps", "early_stop")
MAX_ROLLBACKS = 1  # the second divergence stops the run


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving; `exit_code` is the shell's 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class Diverged(RunError):
    """Non-finite steps came back after a rollback: the run stops at its last good checkpoint."""


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


def resume(ckpt: Checkpointer, run_dir: Path, c: Config, fresh: dict, batches, say) -> tuple[dict, int]:
    """The train state and step to continue `run_dir` from; sets `batches` to its position.

    Removes temporary directories left by a crash mid-save (with a note), falls back past damaged
    checkpoints (moving them to checkpoints.damaged/), rewinds metrics.jsonl to the restored step
    and writes the (possibly extended) config. Without any committed checkpoint it starts over.
    """
    removed = ckpt.clean_tmp()
    if removed:  # on stderr even with --quiet: files were deleted
        print(f"jaxvae: note: removed {len(removed)} unfinished checkpoint(s) left by an interrupted save: "
              f"{', '.join(removed)}", file=sys.stderr, flush=True)
    ckpt.check_model(fresh["params"])  # an edited config.json is not damage: refuse, move nothing aside
    step, restored = ckpt.restore_latest_good(lambda s: ckpt.restore(fresh, s),
                                              on_damaged=lambda s, _: ckpt.quarantine(s))
    if step is None:
        warn(f"{run_dir} has no committed checkpoint; starting it again from step 0")
        state, step = fresh, 0
    else:
        state, data_state = restored
        batches.set_state(data_state)
    if step > c.steps:
        raise RunError(f"{run_dir} is already at step {step}; --steps {c.steps} would go back (raise it to extend)")
    run_lib.truncate_metrics(run_dir, step)
    run_lib.write_json(run_dir / run_lib.CONFIG, c.to_dict())
    say(f"resuming {run_dir} from step {step} of {c.steps}")
    return state, step


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
def roll_back(ckpt: Checkpointer, run_dir: Path, state: dict, step: int, fresh: dict) -> tuple[dict, int]:
    """Return to the last checkpoint before the current run of bad steps, with half the lr.

    Checkpoints saved during the bad run are deleted and metrics.jsonl is rewound, so the run
    directory reads as if the bad steps never happened. The data iterator is not rewound: the
    batches that broke the run are not replayed. Raises Diverged the second time.
    """
    streak, rollbacks = int(state["bad_streak"]), int(state["rollbacks"])
    lr = float(state["opt_state"].hyperparams["learning_rate"] * state["lr_scale"])
    ckpt.delete_after(step - streak)
    good, restored = ckpt.restore_latest_good(lambda s: ckpt.restore(fresh, s)[0],
                                              on_damaged=lambda s, _: ckpt.quarantine(s))
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
    # placed like the restored arrays, so the compiled step is reused
    put = functools.partial(jax.device_put, device=restored["step"].sharding)
    restored["lr_scale"] = put(np.float32(state["lr_scale"]) * np.float32(0.5))
    restored["rollbacks"] = put(np.int32(rollbacks + 1))
    return restored, good
