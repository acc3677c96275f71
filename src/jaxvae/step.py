"""The train step as pure functions: (state, batch) -> (state, metrics), jitted once per run.

The train state is a plain pytree dict:
  params     nnx.State of the model's parameters
  opt_state  optax state (Adam with the learning rate injected, so it is saved and logged)
  step       int32 scalar, steps completed
  key        uint32 key data; step t draws its noise from fold_in(key, t), so a resumed run
             draws exactly the noise an uninterrupted one would
  skipped_steps, bad_streak  int32: updates skipped by the non-finite guard, in all and in a row
  rollbacks  int32, lr_scale float32: rollbacks so far, and the factor (1/2 per rollback) on the lr
  ema        with --ema: the exponential moving average of params (same tree), checkpointed on its own
All of it is checkpointed, so a resumed run continues bitwise where it stopped (resilience.py).
Also the validation metrics, with fixed noise so that they compare across steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxvae import data as data_lib
from jaxvae import parallel, resilience
from jaxvae.config import Config
from jaxvae.losses import binarize, dequantize
from jaxvae.model import build
from jaxvae.objectives import objective_loss

VAL_IMAGES = 512  # validation loss is measured on (up to) this many fixed held-out images
# Each use of randomness has its own key, c.seed plus an offset, so that no two share noise
# (the run's pictures use c.seed itself: pictures.run_key).
TRAIN_KEY_OFFSET = 1  # the train state's key; step t folds in t
VAL_KEY_OFFSET = 2  # validation's fixed noise; batch i folds in i
# A step's key, folded with these, gives the input's noise apart from the model's own draws.
DEQUANTIZE_FOLD, BINARIZE_FOLD = 1, 2


def lr_schedule(c: Config) -> float | optax.Schedule:
    """The learning rate by step: c.lr itself when constant without warm-up (as before schedules
    existed), else an optax schedule with a linear warm-up from 0 over c.warmup_steps."""
    if c.lr_schedule == "cosine":  # a warm-up longer than half the run is cut to that half
        warmup = min(c.warmup_steps, c.steps // 2)
        return optax.warmup_cosine_decay_schedule(0.0, c.lr, warmup, decay_steps=max(c.steps, 1), end_value=0.0)
    if c.warmup_steps:
        return optax.join_schedules([optax.linear_schedule(0.0, c.lr, c.warmup_steps),
                                     optax.constant_schedule(c.lr)], [c.warmup_steps])
    return c.lr


def make_optimizer(c: Config) -> optax.GradientTransformation:
    # inject_hyperparams evaluates the schedule at the optimiser's own step count and keeps the value in
    # opt_state.hyperparams, so it is checkpointed, logged as `lr`, and a rollback's lr_scale multiplies it.
    # b2 was in opt_state.hyperparams (at optax's 0.999) before it was a setting, so older runs still resume.
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr_schedule(c), b2=c.adam_b2)


def ema_decay(c: Config, step: jax.Array) -> jax.Array:
    """The EMA's decay at `step` (steps done before this update): min(ema, (1 + t) / (10 + t)), the
    warm-up of diffusers' EMAModel, so that the average forgets its random initial value early on."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(c.ema), (1.0 + t) / (10.0 + t))


def update_ema(ema, params, decay: jax.Array):
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def eval_params(state: dict):
    """The parameters that validation, pictures and evaluation use: the EMA when the run keeps one."""
    return state.get("ema", state["params"])


def init_state(c: Config, mesh: Mesh | None = None) -> tuple[nnx.GraphDef, dict]:
    """A fresh model and its train state, seeded by c.seed, replicated on every device of `mesh`
    (default: this process's first device alone)."""
    graphdef, params = nnx.split(build(c))
    state = {
        "params": params,
        "opt_state": make_optimizer(c).init(params),
        "step": jnp.zeros((), jnp.int32),
        "key": jax.random.key_data(jax.random.key(c.seed + TRAIN_KEY_OFFSET)),
        "skipped_steps": jnp.zeros((), jnp.int32),
        "bad_streak": jnp.zeros((), jnp.int32),
        "rollbacks": jnp.zeros((), jnp.int32),
        "lr_scale": jnp.ones((), jnp.float32),
    }
    if c.ema:
        state["ema"] = jax.tree.map(jnp.copy, params)
    # Placed like a restored checkpoint (resilience.resume and roll_back place theirs the same way),
    # so that resuming or rolling back reuses the compiled step instead of compiling it again.
    mesh = parallel.data_mesh(jax.local_devices()[:1]) if mesh is None else mesh
    return graphdef, parallel.replicate(state, mesh)


def input_noise(c: Config, x: jax.Array, key: jax.Array) -> jax.Array:
    """The batch as the loss sees it: dequantized (--dequantize) and binarized (--binarize) with noise
    from `key`. Training passes the step's key, so binarization is dynamic (a fresh draw every step);
    validation passes fixed keys, so there it is a fixed one, comparable across steps."""
    if c.dequantize:
        x = dequantize(x, jax.random.fold_in(key, DEQUANTIZE_FOLD))
    if c.binarize:
        x = binarize(x, c.binarize, jax.random.fold_in(key, BINARIZE_FOLD))
    return x


def make_train_step(graphdef: nnx.GraphDef, c: Config):
    """(state, batch) -> (state, metrics); batch (B,S,S,C) float32 in [-1,1]. State is donated."""
    tx = make_optimizer(c)

    def loss_fn(params, x, key, step):
        return objective_loss(c, nnx.merge(graphdef, params), x, key, step)

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state: dict, x: jax.Array):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
        x = input_noise(c, x, key)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], x, key, state["step"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        updates = jax.tree.map(lambda u: u * state["lr_scale"], updates)  # halved by each rollback
        params = optax.apply_updates(state["params"], updates)
        # The non-finite guard: a step whose loss or gradients are not finite changes nothing but
        # the counters (like optax.apply_if_finite). One NaN or inf in any gradient makes their norm
        # non-finite, so that scalar checks them all (a full isfinite pass over gradients, params
        # and Adam state cost ~2% of a CPU step); and from finite gradients Adam's results are
        # finite (its second moment overflows only where the norm already has).
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state = resilience.keep_if(ok, (params, opt_state), (state["params"], state["opt_state"]))
        bad = (~ok).astype(jnp.int32)
        new_state = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1,
                     "skipped_steps": state["skipped_steps"] + bad, "bad_streak": (state["bad_streak"] + bad) * bad}
        if c.ema:  # a skipped step leaves params, and so the average, unchanged
            ema = update_ema(state["ema"], params, ema_decay(c, state["step"]))
            new_state["ema"] = resilience.keep_if(ok, ema, state["ema"])
        metrics["grad_norm"] = grad_norm
        metrics["lr"] = opt_state.hyperparams["learning_rate"] * state["lr_scale"]
        metrics["skipped_steps"] = new_state["skipped_steps"]
        metrics["rollbacks"] = state["rollbacks"]
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, c: Config):
    """(params, batch, key) -> metrics of the loss on a batch, no update. The batch gets the input
    noise of a training batch (input_noise), so validation scores the density that training
    optimises; a fixed key keeps it comparable across steps."""

    @jax.jit
    def eval_step(params, x, key):
        return objective_loss(c, nnx.merge(graphdef, params), input_noise(c, x, key), key)[1]

    return eval_step


VAL_KEYS = ("loss", "reconstruction_loss", "kl_loss", "x_std", "z_std")


def validation_metrics(eval_step, params, val: np.ndarray, c: Config,
                       to_input: Callable[[np.ndarray], np.ndarray] = data_lib.to_model_range) -> dict:
    """The chapter's five metrics on a fixed set of held-out examples with fixed noise, as val_<name>:
    comparable across steps. It uses the full beta, so a warm-up does not flatter early values.
    to_input: rows of `val` -> the model's input (the dataset's model_input; images by default)."""
    n = min(len(val), VAL_IMAGES)
    bs = min(c.batch_size, n)
    key = jax.random.key(c.seed + VAL_KEY_OFFSET)
    totals = []
    for i, lo in enumerate(range(0, n - bs + 1, bs)):
        m = eval_step(params, to_input(val[lo:lo + bs]), jax.random.fold_in(key, i))
        totals.append([float(m[k]) for k in VAL_KEYS])
    return {f"val_{k}": float(v) for k, v in zip(VAL_KEYS, np.mean(totals, axis=0), strict=True)}
