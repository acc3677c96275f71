"""Checkpoints and run directories without training: retention, failed saves, damage, read-only
opening, format checks and the resume config check. Small pytrees, so these run in seconds."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from jaxvae import run as run_lib
from jaxvae.checkpoint import Checkpointer, CheckpointSaveError
from jaxvae.config import Config
from jaxvae.resilience import check_resumable, clean_tmp, config_changes, quarantine, restore_latest_good
from jaxvae.run import RunError


def state(value: float) -> dict:
    return {"params": {"w": jnp.full((4, 3), value, jnp.float32)},
            "step": jnp.asarray(int(value), jnp.int32), "key": jnp.zeros((2,), jnp.uint32)}


def saved(ckpt: Checkpointer, step: int, val_loss: float | None = None) -> None:
    ckpt.save(step, state(step), {"pos": step}, val_loss)
    ckpt.wait()


def tree_hash(path: Path) -> str:
    """Names, sizes and bytes of every file below path: any write shows."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*")):
        h.update(str(f.relative_to(path)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def test_keeps_the_last_n_plus_the_best_by_validation_loss(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    for step, val in zip([1, 2, 3, 4, 5], [5.0, 1.0, 4.0, 3.0, 2.0], strict=True):
        saved(ckpt, step, val)
    assert ckpt.steps() == [2, 4, 5]  # 4, 5 the latest; 2 the best
    saved(ckpt, 6)  # no val_loss (a signal save): kept while among the latest only
    saved(ckpt, 7, 9.0)
    assert ckpt.steps() == [2, 6, 7]
    ckpt.close()


def test_round_trip_is_exact(tmp_path):
    ckpt = Checkpointer(tmp_path)
    s = state(3.0)
    s["params"]["w"] = s["params"]["w"] * jnp.float32(1 / 3)  # not exactly representable in decimal
    ckpt.save(3, s, {"epoch": 1, "pos": 24})
    ckpt.wait()
    restored, data = ckpt.restore(state(0.0))
    assert data == {"epoch": 1, "pos": 24}
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(s["params"]["w"]))
    assert int(restored["step"]) == 3
    ckpt.close()


def test_no_space_left_during_a_save_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path)
    saved(ckpt, 1)
    saved(ckpt, 2)

    async def disk_full(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full)
    with pytest.raises(CheckpointSaveError, match=r"could not write checkpoint 3 .*No space left on device.*"
                                                  r"earlier checkpoints are intact \(steps 1, 2\)"):
        saved(ckpt, 3)
    monkeypatch.undo()
    ckpt.close()

    reopened = Checkpointer(tmp_path, read_only=True)
    assert reopened.steps() == [1, 2]
    assert [p.name for p in reopened.leftover_tmp()] == ["3.orbax-checkpoint-tmp"]
    restored, data = reopened.restore(state(0.0))
    assert int(restored["step"]) == 2 and data == {"pos": 2}
    writable = Checkpointer(tmp_path)
    assert clean_tmp(writable) == ["3.orbax-checkpoint-tmp"] and writable.leftover_tmp() == []
    saved(writable, 3)  # the step can be written again
    assert writable.steps() == [1, 2, 3]
    writable.close()


def test_refuses_to_save_non_finite_state(tmp_path):
    ckpt = Checkpointer(tmp_path)
    bad = state(1.0)
    bad["params"]["w"] = bad["params"]["w"].at[0, 0].set(jnp.nan)
    with pytest.raises(RunError, match="NaN or inf"):
        ckpt.save(1, bad, {})
    ckpt.wait()
    assert ckpt.steps() == []
    ckpt.close()


def damage(step_dir: Path) -> None:
    """Truncate every array data file of the checkpoint's parameters to half its size."""
    files = [f for f in (step_dir / "params").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def test_damaged_checkpoint_falls_back_with_a_warning(tmp_path, capsys):
    ckpt = Checkpointer(tmp_path)
    for step in (1, 2, 3):
        saved(ckpt, step)
    ckpt.close()
    damage(tmp_path / "checkpoints" / "3")
    # a flipped digest stands for bit rot that still decodes: only the digest can tell
    meta = tmp_path / "checkpoints" / "2" / "integrity" / "metadata"
    digests = json.loads(meta.read_text())
    meta.write_text(json.dumps({**digests, "params": "0" * 64}))

    before = tree_hash(tmp_path)
    reader = Checkpointer(tmp_path, read_only=True)
    step, (restored, _) = restore_latest_good(reader, lambda s: reader.restore(state(0.0), s))
    assert step == 1 and int(restored["step"]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint 3 in {tmp_path / 'checkpoints'} is damaged" in err and "falling back to checkpoint 2" in err
    assert "checkpoint 2" in err and "do not match the digest" in err
    assert tree_hash(tmp_path) == before  # reading never repairs or moves anything

    writer = Checkpointer(tmp_path)
    step, _ = restore_latest_good(writer, lambda s: writer.restore(state(0.0), s),
                                  on_damaged=lambda s, _: quarantine(writer, s))
    assert step == 1 and writer.steps() == [1]
    assert sorted(p.name for p in (tmp_path / run_lib.DAMAGED).iterdir()) == ["2", "3"]
    writer.close()


def garbage(folder: Path) -> None:
    """Overwrite every file below `folder` with bytes that are neither UTF-8 nor any format."""
    for f in (p for p in folder.rglob("*") if p.is_file()):
        f.write_bytes(b"\xff\xfe\xfa" + os.urandom(61))


def test_checkpoints_overwritten_with_garbage_are_named_then_skipped(tmp_path, capsys):
    """Garbage where orbax expects JSON (the metrics it reads when it opens the directory) used to
    fail the opening with a UnicodeDecodeError; now the step is named as damaged and skipped."""
    ckpt = Checkpointer(tmp_path)
    for step in (5, 10):
        saved(ckpt, step, val_loss=float(step))
    ckpt.close()
    garbage(tmp_path / "checkpoints" / "10")
    reader = Checkpointer(tmp_path, read_only=True)
    params = reader.restore_params(state(0.0)["params"])
    np.testing.assert_array_equal(params["w"], np.full((4, 3), 5.0, np.float32))
    assert "checkpoint 10 in " in capsys.readouterr().err
    garbage(tmp_path / "checkpoints" / "5")
    with pytest.raises(RunError, match=r"no loadable checkpoint in .*: 10 \(.*\); 5 \("):
        Checkpointer(tmp_path, read_only=True).restore_params(state(0.0)["params"])


def test_a_config_edited_to_another_model_is_one_line_and_moves_nothing(tmp_path, capfd):
    """z_dim changed in config.json: not "damage" (nothing moved aside), one RunError before any
    restore, so no orbax reader is left running (it printed 'Event loop is closed' tracebacks)."""
    from conftest import micro_config, untrained_run

    import jaxvae
    from jaxvae import parallel
    from jaxvae.resilience import resume
    from jaxvae.step import init_state

    run = untrained_run(tmp_path / "run", micro_config())
    config = run_lib.read_json(run / "config.json")
    run_lib.write_json(run / "config.json", {**config, "z_dim": 6})
    before = tree_hash(run)
    with pytest.raises(RunError, match=r"hold a different model than .*config.json describes \(decoder.embed.kernel: "
                                       r"saved \(4, 32\), config gives \(6, 32\)\); was config.json edited"):
        jaxvae.load(run)
    _, fresh = init_state(micro_config(z_dim=6))
    ckpt = Checkpointer(run)
    with pytest.raises(RunError, match="hold a different model"):
        resume(ckpt, run, micro_config(z_dim=6), fresh, None, parallel.data_mesh(), print)
    ckpt.close()
    assert tree_hash(run) == before and not (run / run_lib.DAMAGED).exists()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "damaged" not in err


def test_a_run_without_a_parameter_this_version_builds_is_named_as_older(tmp_path):
    """Checkpoints that lack a parameter the model now has (a broadcast run written before PixelPlanes had
    its paint): one RunError that names the parameter and says the run is older; nothing in the run moves."""
    from conftest import micro_config, untrained_run
    from flax import nnx

    from jaxvae.step import init_state

    c = micro_config()
    run = untrained_run(tmp_path / "run", c)
    before = tree_hash(run)
    params = nnx.to_pure_dict(init_state(c)[1]["params"])
    Checkpointer(run, read_only=True).check_model(params)  # the model the run has: no error
    params["decoder"]["later"] = {"bias": jnp.zeros(3)}  # what a newer version adds
    with pytest.raises(RunError, match=r"have no decoder\.later\.bias, which this version of jaxvae builds for "
                                       r".*config.json: the run was written by an older version"):
        Checkpointer(run, read_only=True).check_model(params)
    assert tree_hash(run) == before


def test_no_loadable_checkpoint_names_every_failure(tmp_path):
    ckpt = Checkpointer(tmp_path)
    saved(ckpt, 1)
    ckpt.close()
    damage(tmp_path / "checkpoints" / "1")
    reader = Checkpointer(tmp_path, read_only=True)
    with pytest.raises(RunError, match=r"no loadable checkpoint in .*: 1 \("):
        restore_latest_good(reader, lambda s: reader.restore_params(state(0.0)["params"], s))


def test_open_run_rejects_other_formats_and_never_writes(tmp_path):
    run = run_lib.create(tmp_path / "run", Config())
    before = tree_hash(run)
    assert run_lib.open_run(run)[1] == Config()
    assert tree_hash(run) == before
    run_lib.write_json(run / run_lib.META, {"jaxvae_version": "9.0", "format": 99})
    expected = rf"written by jaxvae 9.0 \(run format 99\); this jaxvae .* reads format {run_lib.FORMAT}"
    with pytest.raises(RunError, match=expected):
        run_lib.open_run(run)
    (run / run_lib.META).unlink()
    with pytest.raises(RunError, match="no readable meta.json"):
        run_lib.open_run(run)


def test_create_refuses_an_existing_run(tmp_path):
    run_lib.create(tmp_path, Config())
    with pytest.raises(RunError, match="already holds a run .* --overwrite .* --resume"):
        run_lib.create(tmp_path, Config())


def test_truncate_metrics_rewinds_and_drops_a_torn_line(tmp_path):
    for step in (1, 2, 3, 4):
        run_lib.append_metrics(tmp_path, {"step": step, "loss": float(step)})
    with open(tmp_path / run_lib.METRICS, "a") as f:
        f.write('{"step": 5, "lo')  # killed mid-write
    assert run_lib.truncate_metrics(tmp_path, 2) == 3
    assert run_lib.read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]


def test_resume_config_check_lists_every_differing_key(tmp_path):
    c = Config()
    allowed = c.replace(steps=c.steps * 2, log_every=7, eval_every=9, ckpt_every=11, keep=5, max_bad_steps=3)
    assert config_changes(c, allowed) == {}
    check_resumable(tmp_path, c, allowed)
    with pytest.raises(RunError, match=r"config differs .* in beta \(100.0 -> 1.0\), hidden \(256 -> 32\); "
                                       r"a resume may only change steps, log_every"):
        check_resumable(tmp_path, c, c.replace(hidden=32, beta=1.0, steps=5))
