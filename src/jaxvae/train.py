"""Training: the loop that feeds the jitted step (step.py) and writes the run directory: metrics,
checkpoints (and recovery, resilience.py), early stopping, the time estimate, pictures and the summary.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxvae import data as data_lib
from jaxvae import parallel, resilience
from jaxvae import run as run_lib
from jaxvae.checkpoint import Checkpointer
from jaxvae.config import Config, ConfigError
from jaxvae.data import vectors
from jaxvae.outputs import check_run_out
from jaxvae.run import RunError
from jaxvae.step import VAL_IMAGES, eval_params, init_state, make_eval_step, make_train_step, validation_metrics
from jaxvae.tensorboard import TensorBoard

ESTIMATE_STEPS, ESTIMATE_SECONDS = 50, 5.0  # the time estimate comes after this many measured steps or seconds


def check_held_out(c: Config, dataset) -> None:
    """Training needs held-out examples: the validation loss, the best checkpoint, the summary's MSE and
    the pictures (an interpolation takes two images) come from them. Without any (--val-fraction 0)
    or with one, refuse before training rather than fail after it; the message says what to pass."""
    need = 1 if c.vector_data else 2
    n_val, what = len(dataset.val), "example" if c.vector_data else "image"
    if n_val >= need:
        return
    if c.val_data:
        raise ConfigError(f"--val-data {c.val_data} holds {n_val} {what}(s): training needs at least {need} "
                          "held-out (validation loss, best checkpoint, pictures)")
    total = len(dataset.train) + n_val
    hint = f"--val-fraction {math.ceil(100 * (need - 0.5) / total) / 100:g} gives {need}" if total > need else ""
    raise ConfigError(f"--val-fraction {c.val_fraction:g} of {total} {what}s holds out {n_val}: training needs at "
                      f"least {need} held-out (validation loss, best checkpoint, pictures); "
                      + (f"{hint}, or give --val-data" if hint else "give more data"))


def _progress(c: Config, quiet: bool):
    return tqdm(total=c.steps, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, unit="step")


def train(c: Config, out: str | Path, overwrite: bool = False, quiet: bool = False,
          resume: bool = False, tensorboard: bool = False, preset: str | None = None) -> dict:
    """Train config c into the run directory `out`; returns the summary (also in summary.json).

    A fresh run refuses an existing run in `out` unless overwrite. With resume, `out` is an
    existing run that continues from its latest good checkpoint; c may differ from its config
    only in resilience.RESUMABLE (e.g. more steps). SIGTERM/SIGINT save and raise Interrupted.
    A resume of a run that has finished (all its steps, or stopped early) changes nothing: it says how
    to extend the run and returns its summary. `preset` only names the preset in the opening line.
    """
    t_start = time.perf_counter()
    if resume and overwrite:
        raise RunError("--resume continues a run and --overwrite replaces it: pass one of them")
    c = vectors.resolve_config(c)  # vector data: record D in the config, so the run rebuilds this model
    done = resilience.check_resume(out, c) if resume else None  # before anything is loaded or written
    if done is not None:
        if not quiet:
            print(done[1], flush=True)
        return done[0]
    run, graphdef, state = _open(c, out, overwrite, quiet, resume, tensorboard, preset)
    c, ckpt, bar = run.c, run.ckpt, run.bar
    train_step = make_train_step(graphdef, c)
    with resilience.advise_resume(ckpt), run, resilience.StopSignals() as stop:
        state, step, record = _start(run, state, resume)
        start_step = step
        while step < c.steps:
            state, metrics = train_step(state, next(run.batches))
            step += 1
            rate = run.clock.count(step, metrics)
            if rate is not None:  # once, after the first steps past compiling: the time left
                _note(run, _estimate_line(c, preset, step, rate))
            is_eval = step % c.eval_every == 0 or step == c.steps
            is_log = step % c.log_every == 0 or is_eval
            is_save = step % c.ckpt_every == 0 or step == c.steps
            if _diverging(c, state, step, is_log or is_save or stop.received):
                state, step = resilience.roll_back(ckpt, run.run_dir, state, step, run.mesh)
                bar.reset(total=c.steps)
                bar.update(step)
                continue
            if is_log:
                record = _log(run, step, metrics, state, is_eval)
                is_save |= is_eval and run.stopper.observe(step, record["val_loss"])  # keep a new best
            bar.update(1)
            if is_save or stop.received:
                _save(run, step, state, record, is_save)
            if stop.received:
                ckpt.wait()
                raise resilience.interrupted(stop, step, run.run_dir)
            if run.stopper.exhausted:
                state = _keep_best(run, state)
                break
    return _summarise(run, graphdef, state, step, record, start_step if resume else None, t_start)


@dataclasses.dataclass
class _Run:
    """What the loop's helpers share: the run directory and its checkpoints, the data, where lines
    go (say: print, or nothing when quiet), and the loop's clock and early stop."""
    c: Config
    run_dir: Path
    dataset: object
    batches: object
    mesh: Mesh
    ckpt: Checkpointer
    tb: TensorBoard
    bar: tqdm
    say: Callable[..., None]
    quiet: bool
    writer: bool  # process 0: it alone writes metrics, pictures and the report
    eval_step: Callable
    clock: Clock
    stopper: EarlyStop

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc) -> None:
        """Stop the progress bar and the data pipeline; wait for the last save (a failed one raises here)."""
        self.bar.close()
        try:
            self.ckpt.wait()
        finally:
            self.ckpt.close()
            self.tb.close()
            self.batches.close()


def _open(c: Config, out: str | Path, overwrite: bool, quiet: bool, resume: bool, tensorboard: bool,
          preset: str | None) -> tuple[_Run, nnx.GraphDef, dict]:
    """Everything the loop needs, each refusal before anything is written: the data and its batches,
    the run directory (created, unless resumed), the mesh and the fresh train state on it."""
    writer = parallel.is_writer()
    quiet = quiet or not writer
    say = (lambda *a, **k: None) if quiet else functools.partial(print, flush=True)
    if not resume and writer:  # the --out policy before any data is read: never a user's file or folder
        check_run_out(out, overwrite)
    tb = TensorBoard(tensorboard and writer)  # before anything is written: a missing tensorboardX fails here
    mesh = parallel.data_mesh()  # every device of every process; the batch is sharded over them
    parallel.check_batch(c.batch_size, mesh)  # before the data is read, which can take a while
    dataset = data_lib.load_dataset(c)
    c = resolve_dataset_size(c, dataset)
    check_held_out(c, dataset)  # before anything is written or trained: the pictures need two
    batches = dataset.batches(c.batch_size, c.seed, c.flip, mesh)  # images or vectors, sharded over the mesh
    run_dir = run_lib.create(out, c, overwrite) if writer and not resume else Path(out)
    say(_opening_line(c, preset, dataset, run_dir))
    parallel.barrier("run directory created")
    tb.open(run_dir)
    graphdef, state = init_state(c, mesh)  # the state whole on every device; batches are sharded
    run = _Run(c, run_dir, dataset, batches, mesh, Checkpointer(run_dir, keep=c.keep), tb, _progress(c, quiet),
               say, quiet, writer, make_eval_step(graphdef, c), Clock(c.batch_size), EarlyStop(c.early_stop))
    return run, graphdef, state


def _start(run: _Run, state: dict, resume: bool) -> tuple[dict, int, dict]:
    """(state, step, last metrics record) to train from: the fresh state at step 0, or a resumed run's.
    Step 0 is saved when there is no checkpoint yet: the first good one, a resume and rollback target."""
    step, record = 0, {}
    if resume:
        state, step = resilience.resume(run.ckpt, run.run_dir, run.c, state, run.batches, run.mesh, run.say)
        records = run_lib.read_metrics(run.run_dir)
        record = (records or [{}])[-1]
        run.stopper.replay(records, run.ckpt.steps())
        run.bar.update(step)
    if run.ckpt.latest_step() is None:
        run.ckpt.save(0, state, run.batches.get_state())
    return state, step, record


def _diverging(c: Config, state: dict, step: int, syncs: bool) -> bool:
    """Whether --max-bad-steps skipped steps in a row call for a rollback. Reading the streak waits
    for the step, so it is read where the loop syncs anyway (a log, a save, a signal) and every
    max_bad_steps steps."""
    return (syncs or step % c.max_bad_steps == 0) and int(state["bad_streak"]) >= c.max_bad_steps


def _validate(run: _Run, state: dict) -> dict:
    return validation_metrics(run.eval_step, eval_params(state), run.dataset.val, run.c, run.dataset.model_input)


def _log(run: _Run, step: int, metrics: dict, state: dict, is_eval: bool) -> dict:
    """The metrics record of `step`, with the validation metrics when is_eval, written to
    metrics.jsonl (process 0), TensorBoard and the progress bar."""
    images_per_s = run.clock.images_per_s()
    record = {k: float(v) for k, v in jax.device_get(metrics).items()}  # the one host sync
    record.update(step=step, images_per_s=images_per_s)
    if is_eval:
        record.update(_validate(run, state))
        _report(record, run.c, run.bar, run.quiet)
    if run.writer:
        run_lib.append_metrics(run.run_dir, record)
    run.tb.scalars(step, record)
    run.bar.set_postfix(loss=f"{record['loss']:.1f}", kl=f"{record['kl_loss']:.1f}",
                        img_s=f"{record['images_per_s']:.0f}")
    run.clock.new_window()
    return record


def _save(run: _Run, step: int, state: dict, record: dict, is_save: bool) -> None:
    """Checkpoint `step` with its validation loss, by which the best checkpoint is chosen; a save on a
    signal alone, between evaluations, goes without one."""
    val = record.get("val_loss") if record.get("step") == step else None
    if val is None and is_save:
        val = _validate(run, state)["val_loss"]
    run_lib.sync_metrics(run.run_dir)
    run.ckpt.save(step, state, run.batches.get_state(), val)


def _keep_best(run: _Run, state: dict) -> dict:
    """An early stop: the run becomes its best checkpoint. Later (worse) ones go, so that jaxvae.load,
    evaluate and the report see the best parameters, and a resume starts from them."""
    resilience.delete_after(run.ckpt, run.stopper.best_step)
    return run.ckpt.restore(state, run.stopper.best_step)[0]


def _summarise(run: _Run, graphdef: nnx.GraphDef, state: dict, step: int, record: dict,
               resumed_from: int | None, t_start: float) -> dict:
    """Process 0 writes the pictures, summary.json and the report; returns the summary."""
    c, stopper = run.c, run.stopper
    train_seconds = time.perf_counter() - t_start
    if stopper.exhausted:  # the pictures and the summary show the best checkpoint's parameters
        run.say(stopper.message(step))
    if not run.writer:
        return {"steps": c.steps, "process_index": jax.process_index()}
    run.say("writing pictures and report...")
    summary = finish(run.run_dir, c, graphdef, parallel.host_copy(eval_params(state)), run.dataset, record)
    summary.update(wall_time_s=train_seconds, compile_s=run.clock.compile_s or 0.0,
                   images_per_s=run.clock.median_images_per_s(), resumed_from_step=resumed_from)
    if c.ema:
        summary["ema"] = c.ema  # the pictures and reconstruction_mse are of the EMA parameters
    if stopper.exhausted:
        summary.update(early_stopped_at=step, best_step=stopper.best_step, best_val_loss=stopper.best,
                       early_stop=c.early_stop)
    run_lib.write_json(run.run_dir / run_lib.SUMMARY, summary)
    run.tb.images(c.steps, {name.removesuffix(".png"): run.run_dir / name for name in run_lib.PICTURES})
    _write_report(run.run_dir)  # reads the run back on this process alone (see Checkpointer's read_only)
    run.say(f"trained {step} steps in {train_seconds:.1f} s ({summary['images_per_s']:.0f} img/s); "
            f"val reconstruction MSE {summary['reconstruction_mse']:.4f}; wrote {run.run_dir}")
    return summary


class Clock:
    """The loop's wall clock: the first step (tracing and compiling) timed apart, images/s over each
    logging window, and once, after the compiling step, the steps/s for the time estimate."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.window_t, self.window_steps, self.rates, self.compile_s = time.perf_counter(), 0, [], None
        self.measure = None  # (time, step) where the rate for the estimate starts: after the compiling step

    def count(self, step: int, metrics) -> float | None:
        """Count the step just dispatched; returns steps/s when the estimate is due, once."""
        self.window_steps += 1
        if self.compile_s is None:  # the first step traces and compiles: time it apart
            jax.block_until_ready(metrics)
            self.compile_s = time.perf_counter() - self.window_t
            self.new_window()
            self.measure = (self.window_t, step)
        elif self.measure is not None and (step - self.measure[1] >= ESTIMATE_STEPS
                                           or time.perf_counter() - self.measure[0] >= ESTIMATE_SECONDS):
            jax.block_until_ready(metrics)
            rate = (step - self.measure[1]) / (time.perf_counter() - self.measure[0])
            self.measure = None
            return rate
        return None

    def images_per_s(self) -> float:
        """Images/s over the window since the last log; the last value when no step ran in it."""
        if self.window_steps:
            self.rates.append(self.window_steps * self.batch_size / (time.perf_counter() - self.window_t))
        return self.rates[-1] if self.rates else 0.0

    def new_window(self) -> None:
        self.window_t, self.window_steps = time.perf_counter(), 0

    def median_images_per_s(self) -> float:
        return float(np.median(self.rates)) if self.rates else 0.0


def resolve_dataset_size(c: Config, dataset) -> Config:
    """c with dataset_size N set to the training split's size, which btcvae's q(z) estimate needs.
    Refused (before anything is written) for training data whose size is not known."""
    if c.objective != "btcvae" or c.dataset_size:
        return c
    try:
        n = len(dataset.train)
    except TypeError:
        raise ConfigError("--objective btcvae needs the dataset size N, and this training data does not "
                          "give one (streaming?): pass --dataset-size N") from None
    return c.replace(dataset_size=n)


class EarlyStop:
    """--early-stop PATIENCE: counts the evaluations since the validation loss last improved."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_step, self.since = patience, math.inf, None, 0

    def observe(self, step: int, val_loss: float) -> bool:
        """Record one evaluation; True when it is a new best (a checkpoint worth keeping)."""
        if not self.patience:
            return False
        if val_loss < self.best:
            self.best, self.best_step, self.since = val_loss, step, 0
            return True
        self.since += 1
        return False

    def replay(self, records: list[dict], saved_steps: list[int]) -> None:
        """A resume: the evaluations so far from metrics.jsonl. A best counts only with its checkpoint
        (one from before --early-stop was turned on may have none)."""
        for r in records:
            if "val_loss" in r and (r["val_loss"] >= self.best or r["step"] in saved_steps):
                self.observe(r["step"], r["val_loss"])

    @property
    def exhausted(self) -> bool:
        return bool(self.patience) and self.best_step is not None and self.since >= self.patience

    def message(self, step: int) -> str:
        return (f"early stop at step {step}: the validation loss has not improved for {self.since} evaluations; "
                f"kept the best checkpoint, step {self.best_step} (val_loss {self.best:.2f})")


def _note(run: _Run, text: str) -> None:
    """A line for the user that does not tear the progress bar."""
    run.bar.write(text) if not run.bar.disable else run.say(text)


def _opening_line(c: Config, preset: str | None, dataset, run_dir: Path) -> str:
    what = f"preset {preset}" if preset else "config"
    data = (f"{len(dataset.train)} training and {len(dataset.val)} held-out "
            f"{'vectors' if c.vector_data else 'images'} from {c.data}")
    extras = [f"lr schedule {c.lr_schedule}" + (f" (warm-up {c.warmup_steps})" if c.warmup_steps else "")]
    extras += [f"EMA {c.ema:g}"] if c.ema else []
    extras += [f"early stop after {c.early_stop} evaluations without improvement"] if c.early_stop else []
    return f"training {what} for {c.steps:,} steps on {data}; {', '.join(extras)}; writing {run_dir}"


def _estimate_line(c: Config, preset: str | None, step: int, steps_per_s: float) -> str:
    left = (c.steps - step) / steps_per_s if steps_per_s > 0 else math.inf
    line = f"{steps_per_s:.2f} steps/s: about {_duration(left)} for the remaining {c.steps - step:,} steps"
    if preset == "seed" and jax.default_backend() == "cpu":
        line += " (the seed preset is the chapter's full-size model; --preset tiny is a CPU demo of a few minutes)"
    return line


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "an unknown time"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _report(record: dict, c: Config, bar, quiet: bool) -> None:
    if not bar.disable:
        bar.write(f"step {record['step']}: loss {record['loss']:.2f} val_loss {record['val_loss']:.2f}")
    elif not quiet:
        print(f"step {record['step']}/{c.steps}  loss {record['loss']:.2f}  val_loss {record['val_loss']:.2f}"
              f"  kl {record['kl_loss']:.2f}  {record['images_per_s']:.0f} img/s", flush=True)


def _write_report(run_dir: Path) -> None:
    """Regenerate RUN/report.html. The run is complete on disk by now, so a failure here is a
    warning (and `jaxvae report RUN` can retry), never a lost run."""
    try:
        from jaxvae.report import write_report

        write_report(run_dir)
    except Exception as e:
        warnings.warn(f"could not write the report of {run_dir}: {type(e).__name__}: {e}", stacklevel=2)


def finish(run_dir: Path, c: Config, graphdef, params, dataset, last: dict) -> dict:
    """Write the chapter's pictures for the final parameters and return the summary's metrics."""
    from jaxvae import pictures, plots, sample

    model = nnx.merge(graphdef, params)
    keys = ("loss", "reconstruction_loss", "kl_loss", "x_std", "z_std", "val_loss", "skipped_steps", "rollbacks")
    plots.curves(run_lib.read_metrics(run_dir), run_dir / "curves.png")
    if c.vector_data:  # no pictures of vectors: the curves, and the error in data units
        x = dataset.val[:VAL_IMAGES]
        mse = float(np.mean((sample.reconstruct(model, x) - x) ** 2))
        return {"steps": c.steps, "reconstruction_mse": mse, **{k: last[k] for k in keys if k in last}}
    out = pictures.pictures(model, dataset.val, pictures.run_key(c), pictures.RUN)
    summary_images = min(len(dataset.val), VAL_IMAGES)
    plots.reconstructions(out["originals"], out["reconstructions"], out["reconstruction_mse"],
                          run_dir / "reconstructions.png",
                          note=f"summary.json's reconstruction_mse is over the first {summary_images} held-out images")
    prior = "N(0, I)" if c.prior == "normal" else "VampPrior"
    plots.prior_samples(out["samples"][0], run_dir / "samples.png", rows=2, title=f"prior samples, z ~ {prior}")
    plots.interpolation(out["pixel"], out["slerp"], run_dir / "interpolation.png", method="slerp")
    full_mse = sample.pixel_mse(*_reconstruct_all(model, dataset.val[:VAL_IMAGES]))
    return {"steps": c.steps, "reconstruction_mse": full_mse, **{k: last[k] for k in keys if k in last}}


def _reconstruct_all(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from jaxvae import sample

    x = data_lib.to_model_range(images)
    return x, np.concatenate([sample.reconstruct(model, x[i:i + 256]) for i in range(0, len(x), 256)])
