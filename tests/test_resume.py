"""Training that survives: exact resume, signals, kill -9, the non-finite guard and rollbacks,
damaged checkpoints and protected runs, on a micro model and a 40-image dataset (5 steps per
epoch), against one uninterrupted reference run.

Runs in-process where it can (a SIGTERM sent to the test process itself reaches the same
handler). Only the kill -9 test starts subprocesses, three at once, sharing the persistent
compilation cache that the in-process runs fill.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

import jaxvae
from jaxvae import cli, parallel
from jaxvae import data as data_lib
from jaxvae import run as run_lib
from jaxvae import step as step_lib
from jaxvae import train as train_lib
from jaxvae.checkpoint import Checkpointer, all_finite
from jaxvae.config import Config
from jaxvae.resilience import Diverged

MICRO = Config(image_size=8, patch_size=4, hidden=16, depth=1, heads=2, mlp_ratio=2, z_dim=4, batch_size=8,
               beta=1.0, lr=1e-3, steps=24, log_every=1, eval_every=6, ckpt_every=5, keep=2, max_bad_steps=3)
MICRO_FLAGS = ["--image-size", "8", "--patch-size", "4", "--hidden", "16", "--depth", "1", "--heads", "2",
               "--mlp-ratio", "2", "--z-dim", "4", "--batch-size", "8", "--beta", "1", "--lr", "1e-3",
               "--steps", "24", "--log-every", "1", "--eval-every", "6", "--ckpt-every", "5", "--keep", "2",
               "--max-bad-steps", "3"]
TRAIN_IMAGES, VAL_IMAGES = 40, 16

# The subprocesses run the real CLI on the same 40-image dataset.
DRIVER = f"""
import dataclasses, sys
import jaxvae.data as data
real = data.load_dataset
data.load_dataset = lambda c: dataclasses.replace(real(c), train=real(c).train[:{TRAIN_IMAGES}],
                                                  val=real(c).val[:{VAL_IMAGES}])
from jaxvae.cli import main
sys.exit(main(sys.argv[1:]))
"""


def small_dataset(c: Config):
    full = REAL_LOAD(c)
    return dataclasses.replace(full, train=full.train[:TRAIN_IMAGES], val=full.val[:VAL_IMAGES])


REAL_LOAD, REAL_BATCHES = data_lib.load_dataset, parallel.make_batches


def no_pictures(run_dir, c, graphdef, params, dataset, last) -> dict:
    return {"steps": c.steps, "reconstruction_mse": float("nan")}


# One worker takes the whole file, so the reference run below is trained once, not once per worker.
pytestmark = pytest.mark.xdist_group("resume")


@pytest.fixture(scope="module", autouse=True)
def setting():
    """Small data and no pictures (finish is tested elsewhere). The compilation cache is conftest's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data_lib, "load_dataset", small_dataset)
        mp.setattr(train_lib, "finish", no_pictures)
        yield


def comparable(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock images_per_s, the one value allowed to differ."""
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in run_lib.read_metrics(run)]


def final_digests(run: Path, step: int) -> dict:
    return json.loads((run / "checkpoints" / str(step) / "integrity" / "metadata").read_text())


def hooked_batches(actions: dict):
    """parallel.make_batches (what training draws its batches from), with actions[n](batch)
    applied to the n-th batch (counting from 1)."""

    class Hooked:
        def __init__(self, inner):
            self.inner, self.calls, self.closed = inner, 0, False

        def __iter__(self):
            return self

        def __next__(self):
            x = next(self.inner)
            self.calls += 1
            return actions[self.calls](x) if self.calls in actions else x

        def get_state(self):
            return self.inner.get_state()

        def set_state(self, state):
            self.inner.set_state(state)

        def close(self):
            self.closed = True
            self.inner.close()

    def make_batches(*args, **kwargs):
        make_batches.made.append(Hooked(REAL_BATCHES(*args, **kwargs)))
        return make_batches.made[-1]

    make_batches.made = []
    return make_batches


def sigterm(x):
    os.kill(os.getpid(), signal.SIGTERM)
    return x


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    train_lib.train(MICRO, run, quiet=True)
    return run


def test_reference_run_is_complete(reference):
    records = comparable(reference)
    assert [r["step"] for r in records] == list(range(1, 25))
    assert [r["step"] for r in records if "val_loss" in r] == [6, 12, 18, 24]
    assert all(r["skipped_steps"] == 0 and r["rollbacks"] == 0 for r in records)
    kept = Checkpointer(reference, read_only=True).steps()  # the last 2 and the best by val_loss
    assert kept[-2:] == [20, 24] and len(kept) <= 3


def test_sigterm_mid_epoch_saves_exits_and_resumes_bitwise_equal(reference, tmp_path, monkeypatch, capsys):
    run, handler_before = tmp_path / "run", signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(parallel, "make_batches", hooked_batches({7: sigterm}))  # step 7: epoch 2, batch 2
    assert cli.main(["train", *MICRO_FLAGS, "--quiet", "--out", str(run)]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == (f"jaxvae: stopped by SIGTERM at step 7; checkpoint 7 saved. "
                                       f"Resume with: jaxvae train --resume {run}\n")
    assert Checkpointer(run, read_only=True).latest_step() == 7
    assert signal.getsignal(signal.SIGTERM) is handler_before  # ours is gone again
    monkeypatch.setattr(parallel, "make_batches", REAL_BATCHES)
    summary = train_lib.train(MICRO, run, quiet=True, resume=True)
    assert summary["resumed_from_step"] == 7
    assert comparable(run) == comparable(reference)
    assert final_digests(run, 24) == final_digests(reference, 24)


def test_extending_a_finished_run_at_an_epoch_boundary_is_bitwise_equal(reference, tmp_path):
    run = tmp_path / "run"
    train_lib.train(MICRO.replace(steps=10), run, quiet=True)  # 10 steps = 2 whole epochs
    train_lib.train(MICRO, run, quiet=True, resume=True)  # --steps raised to 24
    got, want = comparable(run), comparable(reference)
    assert [r["step"] for r in got] == list(range(1, 25))
    assert got[10:] == want[10:]
    # step 10 was the short run's last step, so it also measured the validation metrics there
    assert {k: v for k, v in got[9].items() if not k.startswith("val_")} == want[9]
    assert final_digests(run, 24) == final_digests(reference, 24)


@pytest.mark.slow
def test_a_run_with_ema_resumes_bitwise_equal(tmp_path, monkeypatch):
    """The EMA of the parameters is checkpointed (an item of its own, with its digest) and continues
    exactly: SIGTERM at step 7 and a resume end where an uninterrupted run ends."""
    c = MICRO.replace(ema=0.9)
    reference, run = tmp_path / "reference", tmp_path / "run"
    train_lib.train(c, reference, quiet=True)
    monkeypatch.setattr(parallel, "make_batches", hooked_batches({7: sigterm}))
    with pytest.raises(KeyboardInterrupt):
        train_lib.train(c, run, quiet=True)
    monkeypatch.setattr(parallel, "make_batches", REAL_BATCHES)
    train_lib.train(c, run, quiet=True, resume=True)
    assert comparable(run) == comparable(reference)
    digests = final_digests(run, 24)
    assert set(digests) == {"params", "ema", "train"} and digests == final_digests(reference, 24)
    assert digests["ema"] != digests["params"]


def test_resuming_a_finished_run_says_so_and_changes_nothing(reference, capsys):
    before = run_hash(reference)
    summary = train_lib.train(MICRO, reference, resume=True)
    assert capsys.readouterr().out == (f"{reference} is finished: it trained all 24 steps. To extend it: "
                                       f"jaxvae train --resume {reference} --steps 48\n")
    assert summary == run_lib.read_json(reference / run_lib.SUMMARY)
    assert run_hash(reference) == before


def test_early_stop_keeps_the_best_checkpoint_and_a_resume_can_go_on(tmp_path, monkeypatch, capsys):
    """Validation losses scripted per evaluation (every 3 steps): best at step 6, then two evaluations
    without improvement stop the run at step 12 with checkpoint 6 as its last."""
    script = iter([5.0, 4.0, 4.5, 4.6] + [3.0 - 0.1 * i for i in range(20)])
    monkeypatch.setattr(train_lib, "validation_metrics",
                        lambda *a, **k: {f"val_{key}": next(script) if key == "loss" else 0.0
                                         for key in step_lib.VAL_KEYS})
    monkeypatch.setattr(train_lib, "ESTIMATE_STEPS", 2)
    c = MICRO.replace(eval_every=3, ckpt_every=24, early_stop=2)
    run = tmp_path / "run"
    summary = train_lib.train(c, run, preset="tiny")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"training preset tiny for 24 steps on {TRAIN_IMAGES} training and {VAL_IMAGES} held-out "
                      f"images from shapes; lr schedule constant, early stop after 2 evaluations without "
                      f"improvement; writing {run}")
    assert any(" steps/s: about " in line and "remaining" in line for line in out[1:4])
    assert out[-3:-1] == ["early stop at step 12: the validation loss has not improved for 2 evaluations; "
                          "kept the best checkpoint, step 6 (val_loss 4.00)", "writing pictures and report..."]
    assert (summary["early_stopped_at"], summary["best_step"], summary["best_val_loss"]) == (12, 6, 4.0)
    ckpt = Checkpointer(run, read_only=True)
    assert ckpt.latest_step() == 6  # the worse ones after it are gone: load, evaluate and report see step 6
    assert [r["step"] for r in run_lib.read_metrics(run)][-1] == 12
    # finished, as long as the patience is the same; --early-stop 0 trains on from the best checkpoint
    train_lib.train(c, run, resume=True)
    assert capsys.readouterr().out.startswith(f"{run} is finished: it stopped early at step 12 and kept its best "
                                              "checkpoint, step 6. To train on from there:")
    summary = train_lib.train(c.replace(early_stop=0), run, quiet=True, resume=True)
    assert summary["resumed_from_step"] == 6 and "early_stopped_at" not in summary
    assert [r["step"] for r in run_lib.read_metrics(run)] == list(range(1, 25))


@pytest.mark.slow
def test_kill_9_at_random_steps_in_subprocesses_then_resume(reference, tmp_path):
    kill_at = [random.randint(1, 20) for _ in range(3)]
    runs = [tmp_path / f"kill{i}" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, "train", *MICRO_FLAGS, "--quiet", "--out", str(r)])
             for r in runs]
    pending, deadline = list(range(3)), time.monotonic() + 300
    while pending and time.monotonic() < deadline:
        for i in list(pending):
            reached = run_lib.read_metrics(runs[i])[-1:] if (runs[i] / run_lib.METRICS).exists() else []
            if procs[i].poll() is not None or (reached and reached[0]["step"] >= kill_at[i]):
                procs[i].send_signal(signal.SIGKILL) if procs[i].poll() is None else None
                pending.remove(i)
        time.sleep(0.02)
    assert [p.wait(timeout=60) for p in procs] == [-signal.SIGKILL] * 3, kill_at
    for run in runs:
        train_lib.train(MICRO, run, quiet=True, resume=True)
        assert comparable(run) == comparable(reference), (run.name, kill_at)
        assert final_digests(run, 24) == final_digests(reference, 24)


def test_poisoned_batches_are_skipped_then_rolled_back(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    poison = {n: (lambda x: x * np.nan) for n in range(3, 8)}  # 5 NaN batches in a row
    batches = hooked_batches(poison)
    monkeypatch.setattr(parallel, "make_batches", batches)
    train_lib.train(MICRO, run, quiet=True)
    assert [b.closed for b in batches.made] == [True]  # the data pipeline's prefetch thread is stopped
    assert "rolled back to checkpoint 0 and halved the learning rate to 0.0005" in capsys.readouterr().err
    records = run_lib.read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 25))  # the abandoned steps were rewound
    # batches 6 and 7 (steps 1 and 2 after the rollback) are still poisoned: skipped, not applied
    assert [r["skipped_steps"] for r in records[:3]] == [1, 2, 2]
    assert np.isnan(records[0]["loss"]) and np.isfinite(records[2]["loss"])
    assert all(r["rollbacks"] == 1 and r["lr"] == np.float32(5e-4) for r in records)
    ckpt = Checkpointer(run, read_only=True)
    for step in ckpt.steps():
        state, _ = ckpt.restore(step_lib.init_state(MICRO)[1], step)
        assert all_finite(state), step


def test_huge_learning_rate_stops_after_the_second_rollback(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(Diverged, match=r"training diverged again: .* non-finite loss or gradients by step \d+ "
                                       r"\(lr 5e\+29\) after 1 rollback\(s\). .* rolled back to its last good "
                                       r"checkpoint, step 0"):
        train_lib.train(MICRO.replace(lr=1e30), run, quiet=True)
    assert "halved the learning rate to 5e+29" in capsys.readouterr().err
    ckpt = Checkpointer(run, read_only=True)
    assert ckpt.steps() == [0]
    assert all_finite(ckpt.restore(step_lib.init_state(MICRO)[1])[0])
    assert run_lib.read_metrics(run) == []


def test_resume_cleans_a_torn_save_and_falls_back_past_a_damaged_checkpoint(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    checkpoints = run / "checkpoints"
    (run / run_lib.SUMMARY).unlink()  # killed before it finished (a finished run is not trained again)
    (checkpoints / "25.orbax-checkpoint-tmp").mkdir()  # what a kill -9 mid-save leaves
    (checkpoints / "24" / "train" / "_METADATA").unlink()
    train_lib.train(MICRO, run, quiet=True, resume=True)
    out = capsys.readouterr()
    assert "removed 1 unfinished checkpoint(s) left by an interrupted save: 25.orbax-checkpoint-tmp" in out.err
    assert f"checkpoint 24 in {checkpoints} is damaged" in out.err and "falling back to checkpoint 20" in out.err
    assert (run / run_lib.DAMAGED / "24").is_dir()
    damage = run / "checkpoints" / "24" / "params" / "_METADATA"  # now the resumed run's own 24
    damage.write_text(damage.read_text()[:40])
    before = run_hash(run)
    assert jaxvae.load(run).sample(1).shape == (1, 8, 8, 3)  # from checkpoint 20, read-only
    assert "checkpoint 24" in capsys.readouterr().err and run_hash(run) == before
    assert comparable(run) == comparable(reference)
    assert final_digests(run, 24) == final_digests(reference, 24)


def test_disk_full_during_a_save_stops_cleanly_and_the_run_resumes(reference, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_write = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def full_at_step_10(self, x, directory):
        if "10.orbax-checkpoint-tmp" in str(directory):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        await real_write(self, x, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full_at_step_10)
    assert cli.main(["train", *MICRO_FLAGS, "--quiet", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no traceback
    assert err.startswith(f"jaxvae: error: could not write checkpoint 10 in {run / 'checkpoints'}: "
                          "No space left on device; earlier checkpoints are intact (steps 0, 5)")
    assert err.endswith(f"; once fixed, continue with `jaxvae train --resume {run.absolute()}`\n")
    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", real_write)
    assert jaxvae.load(run).sample(1).shape == (1, 8, 8, 3)
    train_lib.train(MICRO, run, quiet=True, resume=True)
    assert comparable(run) == comparable(reference)
    assert final_digests(run, 24) == final_digests(reference, 24)


def test_resume_config_mismatch_and_protected_runs_through_the_cli(reference, capsys):
    def error(*argv: str) -> str:
        assert cli.main(list(argv)) == 2
        return capsys.readouterr().err

    before = run_hash(reference)
    err = error("train", "--resume", str(reference), "--hidden", "32", "--beta", "2")
    assert err.startswith(f"jaxvae: error: cannot resume {reference}: the config differs from its config.json in "
                          "beta (1.0 -> 2.0), hidden (16 -> 32); a resume may only change steps")
    assert "--preset" in error("train", "--resume", str(reference), "--preset", "tiny")
    assert "already holds a run" in error("train", *MICRO_FLAGS, "--out", str(reference))
    assert "--steps 10 would go back" in error("train", "--resume", str(reference), "--steps", "10")
    assert run_hash(reference) == before


def run_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        h.update(f"{f.relative_to(path)} {f.stat().st_mtime_ns}".encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def test_load_sample_and_reconstruct_never_modify_the_run(reference, tmp_path, monkeypatch):
    def no_pickle(*args, **kwargs):
        raise AssertionError("a run was read with pickle")

    for name in ("load", "loads", "Unpickler"):  # loading a run must not unpickle anything
        monkeypatch.setattr(f"pickle.{name}", no_pickle)
    before = run_hash(reference)
    vae = jaxvae.load(reference)
    assert vae.sample(2).shape == (2, 8, 8, 3)
    assert cli.main(["sample", str(reference), "--out", str(tmp_path / "s.png"), "--n", "2"]) == 0
    assert cli.main(["reconstruct", str(reference), "--out", str(tmp_path / "r.png"), "--n", "2"]) == 0
    assert run_hash(reference) == before
