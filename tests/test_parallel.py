"""Data parallel and multi-process training on CPU: the same numbers as one device, one process.

Simulated devices need XLA_FLAGS before JAX starts, and processes are processes, so those tests
run workers in subprocesses (bounded by a timeout; the two processes talk over 127.0.0.1 only).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jaxvae import parallel
from jaxvae.config import ConfigError
from jaxvae.data import BatchIterator

TIMEOUT_S = 240
STEPS = 3
MICRO = dict(image_size=16, patch_size=4, hidden=32, depth=1, heads=2, mlp_ratio=2, z_dim=4,
             beta=1.0, lr=2e-3, batch_size=16, flip=True)

# Trains STEPS steps of the micro model on the shapes data through jaxvae.parallel, on every
# device of every process, and prints the losses and a digest of the final parameters.
WORKER = textwrap.dedent("""
    import hashlib, json, sys
    import jax, numpy as np
    from jaxvae import parallel
    from jaxvae.config import Config
    from jaxvae.data.shapes import make_shapes
    from jaxvae.step import init_state, make_train_step

    args = json.loads(sys.argv[1])
    if args.get("coordinator"):
        parallel.initialize(args["coordinator"], args["num_processes"], args["process_id"])
    c = Config(**args["config"])
    images = make_shapes(64, c.image_size, seed=1234, channels=c.channels)[0]
    mesh = parallel.data_mesh()
    batches = parallel.make_batches(images, c.batch_size, c.seed, c.flip, mesh)
    graphdef, state = init_state(c, mesh)
    step = make_train_step(graphdef, c)
    losses = []
    for _ in range(args["steps"]):
        x = next(batches)
        state, metrics = step(state, x)
        losses.append(float(metrics["loss"]))
    params = parallel.host_copy(state["params"])
    digest = hashlib.sha256(b"".join(np.asarray(v).tobytes() for v in jax.tree.leaves(params))).hexdigest()
    out = {"process": jax.process_index(), "devices": len(jax.devices()), "losses": losses, "digest": digest,
           "batch_shards": len(x.sharding.device_set), "local_rows": x.addressable_shards[0].data.shape[0],
           "params_replicated": all(v.sharding.is_fully_replicated for v in jax.tree.leaves(state["params"])),
           "first_kernel": np.asarray(jax.tree.leaves(params)[0]).ravel()[:8].tolist()}
    if jax.process_index() == 0:  # the reference: one device, fed by the data pipeline's own iterator
        from jaxvae.data import BatchIterator
        batches = BatchIterator(images, c.batch_size, seed=c.seed, flip=c.flip)
        with jax.default_device(jax.local_devices()[0]):
            state, out["reference_losses"] = init_state(c)[1], []
            for _ in range(args["steps"]):
                state, metrics = step(state, next(batches))
                out["reference_losses"].append(float(metrics["loss"]))
        out["reference_first_kernel"] = np.asarray(jax.tree.leaves(state["params"])[0]).ravel()[:8].tolist()
    if args.get("train_out"):  # and the real loop: process 0 alone writes, all save checkpoints
        from jaxvae.train import train
        summary = train(c.replace(steps=4, log_every=2, eval_every=4, ckpt_every=2), args["train_out"], quiet=True)
        out["train_summary_keys"] = sorted(summary)
    print("RESULT " + json.dumps(out), flush=True)
""")


def _env(devices: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count", "--ignored")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    return env


def _result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, stdout[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_four_devices_give_the_loss_of_one():
    args = {"config": MICRO, "steps": STEPS}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(args)], env=_env(4), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    four = _result(proc.stdout)
    assert four["devices"] == 4 and four["batch_shards"] == 4 and four["local_rows"] == MICRO["batch_size"] // 4
    assert four["params_replicated"]
    np.testing.assert_allclose(four["losses"], four["reference_losses"], rtol=1e-5)
    np.testing.assert_allclose(four["first_kernel"], four["reference_first_kernel"], rtol=1e-4, atol=1e-6)


def test_batch_that_does_not_split_over_devices_is_one_clear_error(tmp_path):
    cmd = [sys.executable, "-m", "jaxvae", "train", "--preset", "tiny", "--batch-size", "6", "--steps", "1",
           "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=_env(4), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("jaxvae: error: batch_size 6 does not split over 4 devices (1 process(es)): "
                                   "use a multiple of 4")
    assert not (tmp_path / "run").exists()  # nothing written


def test_the_batch_split_is_checked_before_the_data_is_read(tmp_path, monkeypatch):
    """The refusal costs no data loading: the mesh is checked first (here a stand-in of 4 devices)."""
    from types import SimpleNamespace

    from conftest import micro_config

    from jaxvae import data as data_lib
    from jaxvae import train

    monkeypatch.setattr(parallel, "data_mesh", lambda devices=None: SimpleNamespace(devices=np.empty(4)))
    monkeypatch.setattr(data_lib, "load_dataset", lambda c: pytest.fail("the data was read before the check"))
    with pytest.raises(ConfigError, match="batch_size 6 does not split over 4 devices"):
        train.train(micro_config(batch_size=6), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_processes_synchronise_gradients_and_end_with_identical_parameters(tmp_path):
    port, out = _free_port(), tmp_path / "run"
    procs = []
    for pid in range(2):
        args = {"config": MICRO, "steps": STEPS, "coordinator": f"127.0.0.1:{port}", "num_processes": 2,
                "process_id": pid, "train_out": str(out)}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(args)], env=_env(1),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    first, second = (_result(stdout) for stdout, _ in outputs)
    assert (first["process"], second["process"]) == (0, 1)
    assert first["devices"] == second["devices"] == 2
    assert first["local_rows"] == second["local_rows"] == MICRO["batch_size"] // 2  # each read half
    # Different rows, one update: only possible if the gradients were all-reduced.
    assert first["digest"] == second["digest"]
    assert first["losses"] == second["losses"]
    np.testing.assert_allclose(first["losses"], first["reference_losses"], rtol=1e-5)  # = one process, one device
    np.testing.assert_allclose(first["first_kernel"], first["reference_first_kernel"], rtol=1e-4, atol=1e-6)
    # The real loop: process 0 wrote the run, both saved the checkpoints, process 1 wrote nothing else.
    assert "reconstruction_mse" in first["train_summary_keys"]
    assert second["train_summary_keys"] == ["process_index", "steps"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # step 0 is saved too: the first resume and rollback target
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["0", "2", "4"]
    assert (out / "samples.png").is_file() and (out / "summary.json").is_file()
    assert "<img" in (out / "report.html").read_text()  # process 0 read the run back alone, after the others left


def _images(n=40, size=8):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_host_batches_are_the_data_pipelines_batches_and_resume():
    images, mesh = _images(), parallel.data_mesh()
    ours = parallel.Batches(images, 8, seed=3, flip=True, mesh=mesh)
    theirs = BatchIterator(images, 8, seed=3, flip=True)
    for _ in range(7):  # across an epoch boundary (40 images, 5 batches)
        np.testing.assert_array_equal(np.asarray(next(ours)), next(theirs))
    state = ours.get_state()
    expected = [np.asarray(next(ours)) for _ in range(3)]
    resumed = parallel.Batches(images, 8, seed=3, flip=True, mesh=mesh)
    resumed.set_state(json.loads(json.dumps(state)))
    for batch in expected:
        np.testing.assert_array_equal(np.asarray(next(resumed)), batch)


def test_each_process_rows_put_together_are_the_global_batch():
    images = _images()
    halves = [BatchIterator(images, 8, 3, True, rows=slice(lo, lo + 4)) for lo in (0, 4)]
    theirs = BatchIterator(images, 8, seed=3, flip=True)
    for _ in range(6):
        together = np.concatenate([next(h) for h in halves])
        np.testing.assert_array_equal(together, next(theirs))


def test_device_gathered_batches_equal_host_batches():
    images, mesh = _images(), parallel.data_mesh()
    host = parallel.make_batches(images, 8, 5, True, mesh, on_device=False)
    device = parallel.make_batches(images, 8, 5, True, mesh, on_device=True)
    assert isinstance(device, parallel.DeviceBatches)
    for _ in range(6):
        np.testing.assert_array_equal(np.asarray(next(device)), np.asarray(next(host)))


def test_initialize_is_a_no_op_alone_and_rejects_half_settings(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize() is False
    with pytest.raises(ConfigError, match="need --coordinator"):
        parallel.initialize("", 2, 1)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parallel.initialize("localhost", 2, 0)
    with pytest.raises(ConfigError, match=r"--process-id must be in \[0, 2\)"):
        parallel.initialize("127.0.0.1:1234", 2, 2)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ConfigError, match="need --coordinator"):
        parallel.initialize()
