"""jaxvae's and the chapter's train steps in one process, timed in alternating short windows.

On a shared machine the load changes from one minute to the next, so two programs timed a minute
apart are not comparable. Here every variant runs a window of a few steps in turn, many times
over, all already compiled; the load drifts under all of them alike, and each variant's median
window is compared. The chapter's step is built exactly as seed_ref.py's main() builds it (its
VAE, Adam 3e-4, its loss), from the imported module.
"""

from __future__ import annotations

import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from harness import seed_ref_path


def seed_ref_step(batch: int):
    """seed_ref.py's train step on its random images: () -> run one step (returns the loss)."""
    spec = importlib.util.spec_from_file_location("seed_ref", seed_ref_path())
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    # From here to `step`, as seed_ref.main() writes it (fp32).
    model = ref.VAE(dtype=jnp.float32)
    rng = jax.random.PRNGKey(0)
    x = jax.random.uniform(rng, (batch, 64, 64, 3), minval=-1, maxval=1)
    params = model.init(rng, x[:1], rng)["params"]
    tx = optax.adam(3e-4)
    opt = tx.init(params)

    def loss_fn(params, x, rng):
        x_mean, x_log_std, z_mean, z_log_std = model.apply({"params": params}, x, rng)
        rec = 0.5 * jnp.mean(jnp.sum(((x - x_mean) / jnp.exp(x_log_std)) ** 2 + x_log_std, axis=(1, 2, 3)))
        kl = 0.5 * jnp.mean(jnp.sum(jnp.exp(z_log_std) + z_mean ** 2 - 1 - z_log_std, axis=-1)) * 100
        return rec + kl

    @jax.jit
    def step(params, opt, x, rng):
        rng, k = jax.random.split(rng)
        loss, g = jax.value_and_grad(loss_fn)(params, x, k)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, rng, loss

    carry = [params, opt, rng]

    def run():
        carry[0], carry[1], carry[2], loss = step(carry[0], carry[1], x, carry[2])
        return loss

    return run


def jaxvae_step(preset_name: str, batch: int, precision: str, devices=None):
    """jaxvae's jitted train step (donated state) on random images, data-parallel over `devices`."""
    from jaxvae import parallel
    from jaxvae.config import preset
    from jaxvae.step import init_state, make_train_step

    c = preset(preset_name).replace(batch_size=batch, precision=precision)
    mesh = parallel.data_mesh(devices)
    parallel.check_batch(batch, mesh)
    graphdef, state = init_state(c)
    state = parallel.replicate(state, mesh)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, c.image_size, c.image_size, c.channels)).astype(np.float32)
    x = parallel.shard_batch(x, batch, mesh)
    step = make_train_step(graphdef, c)
    carry = [state]

    def run():
        carry[0], metrics = step(carry[0], x)
        return metrics["loss"]

    return run


def interleave(variants: dict, windows: int = 12, steps: int = 2, say=None) -> dict[str, list[float]]:
    """{name: () -> one step} -> {name: seconds per step of each window}, windows in turn."""
    for name, run in variants.items():  # compile and warm up every variant first
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        jax.block_until_ready(run())
        if say:
            say(f"  {name}: compiled and warmed up in {time.perf_counter() - t0:.1f} s")
    times = {name: [] for name in variants}
    for w in range(windows):
        order = list(variants) if w % 2 == 0 else list(reversed(variants))  # nobody always goes first
        for name in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = variants[name]()
            jax.block_until_ready(loss)
            times[name].append((time.perf_counter() - t0) / steps)
    return times
