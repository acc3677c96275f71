"""Training: the pure jitted step, and the loop that feeds it and writes the run directory.

The train state is a plain pytree dict:
  params     nnx.State of the model's parameters
  opt_state  optax state (Adam with the learning rate injected, so it is saved and logged)
  step       int32 scalar, steps completed
  key        uint32 key data; step t draws its noise from fold_in(key, t), so a resumed run
             draws exactly the noise an uninterrupted one would
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from jaxvae import data as data_lib
from jaxvae import parallel
from jaxvae import run as run_lib
from jaxvae.checkpoint import Checkpointer
from jaxvae.config import Config
from jaxvae.losses import vae_loss
from jaxvae.model import build

VAL_IMAGES = 512  # validation loss is measured on (up to) this many fixed held-out images


def make_optimizer(c: Config) -> optax.GradientTransformation:
    return optax.inject_hyperparams(optax.adam)(learning_rate=c.lr)


def init_state(c: Config) -> tuple[nnx.GraphDef, dict]:
    """A fresh model and its train state, seeded by c.seed."""
    graphdef, params = nnx.split(build(c))
    state = {
        "params": params,
        "opt_state": make_optimizer(c).init(params),
        "step": jnp.zeros((), jnp.int32),
        "key": jax.random.key_data(jax.random.key(c.seed + 1)),
    }
    return graphdef, state


def make_train_step(graphdef: nnx.GraphDef, c: Config):
    """(state, batch) -> (state, metrics); batch (B,S,S,C) float32 in [-1,1]. State is donated."""
    tx = make_optimizer(c)

    def loss_fn(params, x, key):
        return vae_loss(nnx.merge(graphdef, params), x, key, c.beta)

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state: dict, x: jax.Array):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], x, key)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["lr"] = opt_state.hyperparams["learning_rate"]
        new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "key": state["key"]}
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, c: Config):
    """(params, batch, key) -> metrics of the loss on a batch, no update."""

    @jax.jit
    def eval_step(params, x, key):
        return vae_loss(nnx.merge(graphdef, params), x, key, c.beta)[1]

    return eval_step


def validation_loss(eval_step, params, val: np.ndarray, c: Config) -> float:
    """Mean loss over a fixed set of held-out images with fixed noise: comparable across steps."""
    n = min(len(val), VAL_IMAGES)
    bs = min(c.batch_size, n)
    key = jax.random.key(c.seed + 2)
    total, count = 0.0, 0
    for i, lo in enumerate(range(0, n - bs + 1, bs)):
        x = data_lib.to_model_range(val[lo:lo + bs])
        total += float(eval_step(params, x, jax.random.fold_in(key, i))["loss"]) * bs
        count += bs
    return total / count


def _progress(c: Config, quiet: bool):
    return tqdm(total=c.steps, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, unit="step")


def train(c: Config, out: str | Path, overwrite: bool = False, quiet: bool = False) -> dict:
    """Train a fresh run of config c into `out`; returns the summary (also in summary.json)."""
    t_start = time.perf_counter()
    dataset = data_lib.load_dataset(c)
    mesh = parallel.data_mesh()  # every device of every process; the batch is sharded over them
    batches = parallel.make_batches(dataset.train, c.batch_size, c.seed, c.flip, mesh)
    run_dir = run_lib.create(out, c, overwrite) if parallel.is_writer() else Path(out)
    parallel.barrier("run directory created")
    quiet = quiet or not parallel.is_writer()

    graphdef, state = init_state(c)
    state = parallel.replicate(state, mesh)
    train_step, eval_step = make_train_step(graphdef, c), make_eval_step(graphdef, c)
    ckpt = Checkpointer(run_dir)
    say = (lambda *a: None) if quiet else print
    bar = _progress(c, quiet)
    window_t, window_steps, rates, compile_s = time.perf_counter(), 0, [], None
    record = {}
    try:
        for step in range(int(state["step"]), c.steps):
            state, metrics = train_step(state, next(batches))
            done = step + 1
            window_steps += 1
            if compile_s is None:  # the first step traces and compiles: time it apart
                jax.block_until_ready(metrics)
                compile_s = time.perf_counter() - window_t
                window_t, window_steps = time.perf_counter(), 0
            is_eval = done % c.eval_every == 0 or done == c.steps
            if done % c.log_every == 0 or is_eval:
                record = {k: float(v) for k, v in jax.device_get(metrics).items()}  # the one host sync
                now = time.perf_counter()
                if window_steps:
                    rates.append(window_steps * c.batch_size / (now - window_t))
                record.update(step=done, images_per_s=rates[-1] if rates else 0.0)
                if is_eval:
                    record["val_loss"] = validation_loss(eval_step, state["params"], dataset.val, c)
                    if not bar.disable:
                        bar.write(f"step {done}: loss {record['loss']:.2f} val_loss {record['val_loss']:.2f}")
                    elif not quiet:
                        say(f"step {done}/{c.steps}  loss {record['loss']:.2f}  val_loss {record['val_loss']:.2f}"
                            f"  kl {record['kl_loss']:.2f}  {record['images_per_s']:.0f} img/s", flush=True)
                if parallel.is_writer():
                    run_lib.append_metrics(run_dir, record)
                bar.set_postfix(loss=f"{record['loss']:.1f}", kl=f"{record['kl_loss']:.1f}",
                                img_s=f"{record['images_per_s']:.0f}")
                window_t, window_steps = time.perf_counter(), 0
            bar.update(1)
            if done % c.ckpt_every == 0 or done == c.steps:
                ckpt.save(done, state, batches.get_state())
    finally:
        bar.close()
        ckpt.wait()
        ckpt.close()

    train_seconds = time.perf_counter() - t_start
    if not parallel.is_writer():  # process 0 alone writes the pictures and the summary
        return {"steps": c.steps, "process_index": jax.process_index()}
    summary = finish(run_dir, c, graphdef, parallel.host_copy(state["params"]), dataset, record)
    summary.update(wall_time_s=train_seconds, compile_s=compile_s or 0.0,
                   images_per_s=float(np.median(rates)) if rates else 0.0)
    run_lib.write_json(run_dir / run_lib.SUMMARY, summary)
    say(f"trained {c.steps} steps in {train_seconds:.1f} s ({summary['images_per_s']:.0f} img/s); "
        f"val reconstruction MSE {summary['reconstruction_mse']:.4f}; wrote {run_dir}")
    return summary


def finish(run_dir: Path, c: Config, graphdef, params, dataset, last: dict) -> dict:
    """Write the chapter's pictures for the final parameters and return the summary's metrics."""
    from jaxvae import plots, sample

    model = nnx.merge(graphdef, params)
    val = data_lib.to_model_range(dataset.val[:10])
    recon = sample.reconstruct(model, val)
    mse = sample.pixel_mse(val, recon)
    plots.curves(run_lib.read_metrics(run_dir), run_dir / "curves.png")
    plots.reconstructions(val, recon, mse, run_dir / "reconstructions.png")
    samples = sample.sample_prior(model, 20, jax.random.key(c.seed + 3))
    plots.image_grid(samples, run_dir / "samples.png", rows=2, title="prior samples, z ~ N(0, I)")
    x0, x1 = data_lib.to_model_range(dataset.val[-2:])
    pixel = sample.interpolate_pixels(x0, x1, 10)
    latent = sample.interpolate(model, x0, x1, 10, "slerp")
    plots.interpolation(pixel, latent, run_dir / "interpolation.png", method="slerp")
    full_mse = sample.pixel_mse(*_reconstruct_all(model, dataset.val[:VAL_IMAGES]))
    keys = ("loss", "reconstruction_loss", "kl_loss", "x_std", "z_std", "val_loss")
    return {"steps": c.steps, "reconstruction_mse": full_mse, **{k: last[k] for k in keys if k in last}}


def _reconstruct_all(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from jaxvae import sample

    x = data_lib.to_model_range(images)
    return x, np.concatenate([sample.reconstruct(model, x[i:i + 256]) for i in range(0, len(x), 256)])
