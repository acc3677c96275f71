"""One measurement of jaxvae's train step, in its own process; prints one JSON line.

    python benchmarks/step_worker.py --preset seed --batch 32 --precision fp32 --steps 6 --windows 3

Compiles the step once (timed), runs two warm-up steps, then `windows` timed windows of `steps`
steps each and reports the median window: on a shared machine one window can be hit by someone
else's job. CPU-seconds per step (all threads) is reported too: it moves less with the load.
With several devices (e.g. JAX_NUM_CPU_DEVICES=2 on a CPU) the step runs data-parallel over all
of them, exactly as `jaxvae train` does.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import numpy as np

from jaxvae import parallel
from jaxvae.config import preset
from jaxvae.step import init_state, make_train_step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="seed")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--windows", type=int, default=3)
    a = p.parse_args()

    c = preset(a.preset).replace(batch_size=a.batch, precision=a.precision)
    mesh = parallel.data_mesh()
    parallel.check_batch(c.batch_size, mesh)
    graphdef, state = init_state(c)
    state = parallel.replicate(state, mesh)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (c.batch_size, c.image_size, c.image_size, c.channels)).astype(np.float32)
    x = parallel.shard_batch(x[parallel.local_rows(c.batch_size, mesh)], c.batch_size, mesh)

    t0 = time.perf_counter()
    step = make_train_step(graphdef, c).lower(state, x).compile()
    compile_s = time.perf_counter() - t0
    cost = step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0

    for _ in range(2):
        state, metrics = step(state, x)
    jax.block_until_ready(metrics)
    times, cpu = [], []
    for _ in range(a.windows):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(a.steps):
            state, metrics = step(state, x)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t0) / a.steps)
        cpu.append((time.process_time() - c0) / a.steps)
    loss = float(jax.device_get(metrics["loss"]))
    assert np.isfinite(loss), loss
    conv_rate = reference_conv_gflops(a.windows) if c.arch == "conv" else None

    dt = float(np.median(times))
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    print(json.dumps({
        "preset": a.preset, "batch": a.batch, "precision": a.precision,
        "platform": device.platform, "device_kind": device.device_kind, "devices": len(jax.devices()),
        "images_per_s": a.batch / dt, "step_ms": dt * 1000, "window_step_ms": [t * 1000 for t in times],
        "cpu_s_per_step": float(np.median(cpu)), "compile_s": compile_s,
        "flops_per_step": flops * len(jax.devices()),  # XLA's cost analysis counts one device's share
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mb": stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None,
        "arch": c.arch, "reference_conv_gflops": conv_rate,
    }))


def reference_conv_gflops(windows: int) -> float:
    """GFLOP/s of one 3x3 conv, 32 -> 32 channels on 32x32 images, batch 32, forward and backward (3x the
    forward FLOPs): this machine's conv rate, which a conv model's achieved rate is set beside."""
    import jax.numpy as jnp

    x, w = jnp.ones((32, 32, 32, 32)), jnp.full((3, 3, 32, 32), 0.01)
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",  # noqa: E731
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
    jax.block_until_ready(grad(x, w))
    times = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(10):
            out = grad(x, w)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / 10)
    return 3 * 32 * 32 * 32 * 9 * 32 * 32 * 2 / float(np.median(times)) / 1e9


if __name__ == "__main__":
    main()
