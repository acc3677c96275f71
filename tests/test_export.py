"""Using a trained VAE elsewhere: `jaxvae encode` (a dataset -> latents), `jaxvae export` (a run -> one
safetensors file), `jaxvae.load(file)`, the latent scale, and every bad input."""

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import micro_config, untrained_run
from safetensors import safe_open
from safetensors.numpy import save_file

import jaxvae
from jaxvae import cli, encode, export
from jaxvae import data as data_lib
from jaxvae import run as run_lib
from jaxvae.data import shapes, sources
from jaxvae.model import build

SRC = str(Path(__file__).resolve().parents[1] / "src")
N = 37  # examples to encode: no batch size below divides it

# test_cli, test_export and test_report read the session's trained_run: one worker takes the three, so it is
# trained once.
pytestmark = pytest.mark.xdist_group("trained_run")


def _cli(capsys, *args) -> tuple[int, str]:
    """Exit code and stderr, less the note of which checkpoint a command loaded."""
    rc = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    return rc, "".join(line for line in err.splitlines(True) if not line.startswith("jaxvae: checkpoint "))


def _images(n: int = N, size: int = 16, channels: int = 3, seed: int = 5) -> np.ndarray:
    return shapes.make_shapes(n, size, seed=seed, channels=channels)[0]  # (n, size, size, channels) uint8


def _npy(tmp_path: Path, images: np.ndarray, name: str = "x.npy") -> Path:
    path = tmp_path / name
    np.save(path, images)
    return path


def _latents(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return dict(z)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model.safetensors"
    assert cli.main(["export", str(trained_run), "--out", str(out)]) == 0
    return out


# --- export and load --------------------------------------------------------------------------

def test_exported_file_loads_as_the_same_model_bitwise(trained_run, exported):
    a, b = jaxvae.load(trained_run), jaxvae.load(exported)
    assert b.config == a.config and b.run_dir is None and b.source == exported
    for (name, pa), pb in zip(export.flat_params(a.model).items(), export.flat_params(b.model).values(), strict=True):
        assert np.array_equal(pa, pb), name
    x = data_lib.to_model_range(_images(8))
    qa, qb = a.encode(x), b.encode(x)
    assert np.array_equal(qa.mean, qb.mean) and np.array_equal(qa.log_std, qb.log_std)
    pa, pb = a.decode(qa.mean), b.decode(qb.mean)
    assert np.array_equal(pa.mean, pb.mean) and np.array_equal(pa.log_std, pb.log_std)
    # the stored scale is the one the run measures lazily (same examples, same code)
    assert b.latent_scale is not None and b.latent_scale == a.latent_scale


def test_export_file_is_flat_with_its_metadata(trained_run, exported):
    with safe_open(str(exported), framework="numpy") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert "encoder.patch.kernel" in keys and "decoder.head.bias" in keys
    assert all("value" not in k.split(".") for k in keys)
    assert int(meta["jaxvae_format"]) == export.EXPORT_FORMAT and meta["jaxvae_version"] == run_lib.VERSION
    assert json.loads(meta["config"]) == run_lib.read_json(trained_run / "config.json")
    assert json.loads(meta["latent_scale"]) > 0 and "training split" in meta["latent_scale_examples"]


@pytest.mark.slow
def test_exported_file_loads_in_a_process_that_never_saw_the_run(trained_run, exported, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(exported, elsewhere / "model.safetensors")  # the file alone, under a new name's folder
    x = data_lib.to_model_range(_images(6))
    np.save(elsewhere / "x.npy", x)
    script = textwrap.dedent("""
        import numpy as np, jaxvae
        vae = jaxvae.load("model.safetensors")
        q = vae.encode(np.load("x.npy"))
        p = vae.decode(q.mean)
        np.savez("out.npz", mean=q.mean, log_std=q.log_std, decoded=p.mean, scale=vae.latent_scale)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))} | {"PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    got = _latents(elsewhere / "out.npz")
    vae = jaxvae.load(trained_run)
    q = vae.encode(x)
    assert np.array_equal(got["mean"], q.mean) and np.array_equal(got["log_std"], q.log_std)
    assert np.array_equal(got["decoded"], vae.decode(q.mean).mean)
    assert float(got["scale"]) == vae.latent_scale


@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage"])
def test_damaged_file_is_one_clear_error(capsys, exported, tmp_path, damage):
    bad = tmp_path / "bad.safetensors"
    blob = bytearray(exported.read_bytes())
    if damage == "truncated":
        blob = blob[: len(blob) // 2]
    elif damage == "flipped":
        blob[-3] ^= 0x40  # a byte of the last tensor's data: only the digest notices
    else:
        blob = bytearray(b"not a safetensors file at all")
    bad.write_bytes(bytes(blob))
    expect = "is corrupted" if damage == "flipped" else "not a readable safetensors file"
    with pytest.raises(run_lib.RunError, match=expect):
        jaxvae.load(bad)
    rc, err = _cli(capsys, "sample", bad, "--out", tmp_path / "s.png")
    assert rc == 2 and err.startswith("jaxvae: error:") and expect in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.png").exists()


def _rewrite(src: Path, dst: Path, **meta_changes) -> Path:
    with safe_open(str(src), framework="numpy") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118
    save_file(tensors, str(dst), metadata=meta | meta_changes)
    return dst


def test_files_jaxvae_cannot_read_are_refused(exported, tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(foreign))
    with pytest.raises(run_lib.RunError, match="not one jaxvae export wrote"):
        jaxvae.load(foreign)
    newer = _rewrite(exported, tmp_path / "newer.safetensors", jaxvae_format=str(export.EXPORT_FORMAT + 1))
    with pytest.raises(run_lib.RunError, match=f"export format {export.EXPORT_FORMAT + 1}.*upgrade"):
        jaxvae.load(newer)
    with safe_open(str(exported), framework="numpy") as f:
        config = json.loads(f.metadata()["config"])
    unknown = _rewrite(exported, tmp_path / "unknown.safetensors", config=json.dumps(config | {"warp_drive": 1}))
    with pytest.raises(run_lib.RunError, match=r"unknown keys \['warp_drive'\]"):
        jaxvae.load(unknown)
    config["beta"] = 7.0  # a valid config that is not the one written: the checksum catches it
    edited = _rewrite(exported, tmp_path / "edited.safetensors", config=json.dumps(config))
    with pytest.raises(run_lib.RunError, match="is corrupted"):
        jaxvae.load(edited)
    with pytest.raises(run_lib.RunError, match="no such model file"):
        jaxvae.load(tmp_path / "missing.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(run_lib.RunError, match="neither a run directory nor an exported"):
        jaxvae.load(tmp_path / "notes.txt")


def test_picture_commands_accept_the_exported_file(capsys, exported, tmp_path):
    for command in ("sample", "reconstruct"):  # interpolate loads the model as reconstruct does
        out = tmp_path / f"{command}.png"
        rc, err = _cli(capsys, command, exported, "--out", out)
        assert rc == 0, err
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- encode ---------------------------------------------------------------------------------

def test_encode_file_round_trip_is_bitwise_the_models_encoding(capsys, trained_run, exported, tmp_path):
    images = _images()
    data = _npy(tmp_path, images)
    rc, err = _cli(capsys, "encode", trained_run, "--data", data, "--out", tmp_path / "z.npz", "--batch-size", 8,
                   "--quiet")
    assert rc == 0, err
    z = _latents(tmp_path / "z.npz")
    assert set(z) == {"mean", "log_std", "index", "latent_scale"}
    assert np.array_equal(z["index"], np.arange(N))
    # the same batches through the Python API: batches of 8, the last one zero-padded
    vae = jaxvae.load(trained_run)
    x = data_lib.to_model_range(images)
    x = np.concatenate([x, np.zeros((-N % 8, *x.shape[1:]), np.float32)])
    qs = [vae.encode(x[i:i + 8]) for i in range(0, len(x), 8)]
    assert np.array_equal(z["mean"], np.concatenate([q.mean for q in qs])[:N])
    assert np.array_equal(z["log_std"], np.concatenate([q.log_std for q in qs])[:N])
    assert float(z["latent_scale"]) == pytest.approx(1 / np.std(z["mean"].astype(np.float64)), rel=1e-12)
    scale, where = encode.run_latent_scale(vae, str(data))  # export --data: the scale over another source
    assert scale == pytest.approx(float(z["latent_scale"]), rel=1e-5) and where == f"all {N} examples of {data}"
    # and through the exported file: the same bytes
    rc, err = _cli(capsys, "encode", exported, "--data", data, "--out", tmp_path / "zf.npz", "--batch-size", 8,
                   "--quiet")
    assert rc == 0, err
    zf = _latents(tmp_path / "zf.npz")
    assert all(np.array_equal(zf[k], z[k]) for k in z)


def test_encode_sample_is_reproducible_under_a_seed(capsys, trained_run, tmp_path):
    images = _images()
    rc, err = _cli(capsys, "encode", trained_run, "--data", _npy(tmp_path, images), "--out", tmp_path / "s.npz",
                   "--what", "sample", "--seed", 3, "--batch-size", 8, "--quiet")
    assert rc == 0, err
    s = _latents(tmp_path / "s.npz")
    assert set(s) == {"sample", "index", "latent_scale"}
    vae = jaxvae.load(trained_run)
    a = encode.encode_dataset(vae, images, "both", seed=3, batch_size=8, progress=False)
    assert np.array_equal(s["sample"], a["sample"])  # the same seed, the same draws
    other = encode.encode_dataset(vae, images, "both", seed=4, batch_size=8, progress=False)
    assert np.abs(a["sample"] - other["sample"]).max() > 0.1  # another seed, other draws
    wide = encode.encode_dataset(vae, images, "both", seed=3, batch_size=16, progress=False)
    np.testing.assert_allclose(a["sample"], wide["sample"], rtol=0, atol=1e-6)  # whatever the batch size
    # closed form: example i's noise is normal(fold_in(key(seed), i))
    eps = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(3), i), (4,))) for i in range(N)])
    np.testing.assert_allclose(a["sample"], a["mean"] + np.exp(a["log_std"]) * eps, rtol=1e-6, atol=1e-6)


ORDER_WORKER = textwrap.dedent("""
    import sys, jax
    from jaxvae import cli
    assert len(jax.local_devices()) == 4, jax.local_devices()
    sys.exit(cli.main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_encode_keeps_the_source_order_over_four_devices(capsys, trained_run, tmp_path):
    data = _npy(tmp_path, _images())
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")} | {
        "PYTHONPATH": SRC, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    args = ["encode", str(trained_run), "--data", str(data), "--what", "both", "--quiet"]
    proc = subprocess.run([sys.executable, "-c", ORDER_WORKER, *args, "--out", str(tmp_path / "four.npz"),
                           "--batch-size", "12"], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    rc, err = _cli(capsys, *args, "--out", tmp_path / "one.npz", "--batch-size", "5")
    assert rc == 0, err
    four, one = _latents(tmp_path / "four.npz"), _latents(tmp_path / "one.npz")
    assert np.array_equal(four["index"], np.arange(N))
    for k in ("mean", "log_std", "sample"):  # a shuffled row would be off by far more
        np.testing.assert_allclose(four[k], one[k], rtol=0, atol=2e-5)


def test_encode_writes_the_sources_factors_and_labels(capsys, tmp_path):
    _, factors = shapes.make_shapes(data_lib.SHAPES_COUNT, 2, seed=data_lib.SHAPES_SEED)  # 2 px: cheap
    names, table = shapes.factor_table(factors)
    extras = encode.source_extras(micro_config(), "shapes")
    assert list(extras["factor_names"]) == list(names) == list(shapes.FACTOR_COLUMNS)
    assert extras["factors"].shape == (data_lib.SHAPES_COUNT, 11)
    assert np.array_equal(extras["factors"], table)  # the rendered images' own factors, row for row
    assert np.array_equal(table[:, 0], factors["shape"]) and np.array_equal(table[:, 5:8], factors["colour"])
    # mnist: labels from the idx1 file beside the images, gzipped here
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    images = _images(9, channels=1)[..., 0]
    labels = np.arange(9, dtype=np.uint8)[::-1].copy()
    (mnist / "train-images-idx3-ubyte").write_bytes(struct.pack(">4I", 0x803, 9, 16, 16) + images.tobytes())
    (mnist / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">2I", 0x801, 9) + labels.tobytes()))
    run = untrained_run(tmp_path / "gray", micro_config(channels=1))
    rc, err = _cli(capsys, "encode", run, "--data", f"mnist:{mnist}", "--out", tmp_path / "m.npz", "--quiet")
    assert rc == 0, err
    z = _latents(tmp_path / "m.npz")
    assert np.array_equal(z["labels"], labels) and z["mean"].shape == (9, 4)
    # cifar10: each record's label byte
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    records = np.zeros((3, sources.CIFAR_RECORD), np.uint8)
    records[:, 0] = [7, 0, 3]
    records.tofile(cifar / "data_batch_1.bin")
    assert np.array_equal(sources.read_labels(sources.parse_source(f"cifar10:{cifar}")), [7, 0, 3])


# --- the latent scale -------------------------------------------------------------------------

def test_latent_scale_is_one_over_the_pooled_std():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.5, (n, 4)) for n in (1, 7, 100, 33)]
    m = encode.Moments()
    for c in chunks:
        m.add(c)
    everything = np.concatenate(chunks)
    assert m.std == pytest.approx(np.std(everything), rel=1e-12)
    assert encode.latent_scale(everything) == pytest.approx(1 / np.std(everything), rel=1e-12)
    assert encode.latent_scale(np.ones((5, 3))) is None  # means that never vary have no scale
    idx = encode.scale_subset(10_000, 4096)
    assert len(idx) == 4096 and len(np.unique(idx)) == 4096 and idx[0] == 0 and idx[-1] > 9_990
    assert np.array_equal(encode.scale_subset(100, 4096), np.arange(100))


def test_evaluate_reports_the_latent_scale():
    c = micro_config(arch="mlp", data_dim=3, hidden=8, depth=1)
    model = build(c)
    x = np.random.default_rng(2).normal(size=(12, 3)).astype(np.float32)
    r = jaxvae.evaluate(model, x, iw_samples=1, config=c)
    mean = np.asarray(model.encode(x).mean, np.float64)
    assert r["latent_std"] == pytest.approx(np.std(mean), rel=1e-5)
    assert r["latent_scale"] == pytest.approx(1 / np.std(mean), rel=1e-5)
    assert "latent_scale = 1/std" in jaxvae.format_table(r)


# --- bad input: one line, exit 2, nothing written or overwritten --------------------------------

def test_bad_encode_and_export_inputs(capsys, trained_run, tmp_path):
    data = _npy(tmp_path, _images())
    small = _npy(tmp_path, _images(size=8), "small.npy")
    vectors = _npy(tmp_path, np.random.default_rng(0).normal(size=(20, 5)), "vectors.npy")
    kept = tmp_path / "kept.npz"
    kept.write_bytes(b"the user's file")
    kept_model = tmp_path / "kept.safetensors"
    kept_model.write_bytes(b"the user's model")
    empty_run = run_lib.create(tmp_path / "no_checkpoint", micro_config())
    before = {p: p.stat().st_mtime_ns for p in sorted(trained_run.rglob("*"))}
    enc, a = ["encode", trained_run, "--data", data, "--out"], tmp_path / "a.npz"
    cases = [
        (enc + [kept], "already exists: pass --overwrite"),
        (enc + [trained_run / "z.npz"], "inside the run"),
        (["encode", trained_run, "--data", small, "--out", a], "shape (8, 8, 3), but the run takes (16, 16, 3)"),
        (["encode", trained_run, "--data", vectors, "--out", a],
         "vectors of shape (5,), but the run takes images of shape (16, 16, 3)"),
        (enc + [a, "--checkpoint", "best-ish"], "--checkpoint must be best, latest or a step number"),
        (enc + [a, "--checkpoint", "7"], "no checkpoint at step 7"),
        (enc + [a, "--what", "median"], "unknown --what 'median'"),
        (enc + [tmp_path / "a.npy"], "must name a .npz file"),
        (["export", empty_run, "--out", tmp_path / "a.safetensors"], "no checkpoint in"),
        (["export", trained_run, "--out", kept_model], "already exists: pass --overwrite"),
        (["export", trained_run, "--out", trained_run / "m.safetensors"], "inside the run"),
    ]
    for args, message in cases:
        rc, err = _cli(capsys, *args)
        assert rc == 2, (args, err)
        assert err.startswith("jaxvae: error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert kept.read_bytes() == b"the user's file" and kept_model.read_bytes() == b"the user's model"
    assert not list(tmp_path.glob("a.*")) and not list(tmp_path.glob("*.tmp"))
    assert {p: p.stat().st_mtime_ns for p in sorted(trained_run.rglob("*"))} == before


def test_overwrite_replaces_latents_but_never_a_users_file(capsys, trained_run, tmp_path):
    out, data = tmp_path / "z.npz", _npy(tmp_path, _images(5))
    for _ in range(2):  # the second time replaces the first's latents
        rc, err = _cli(capsys, "encode", trained_run, "--data", data, "--out", out, "--overwrite", "--quiet",
                       "--checkpoint", "10")
        assert rc == 0, err
    assert _latents(out)["mean"].shape == (5, 4)
    mine = tmp_path / "mine.npz"
    mine.write_bytes(b"old")
    rc, err = _cli(capsys, "encode", trained_run, "--data", data, "--out", mine, "--overwrite", "--quiet")
    assert rc == 2 and "was not written by jaxvae" in err and mine.read_bytes() == b"old"


def test_encode_vectors_with_the_runs_standardization(capsys, tmp_path):
    rng = np.random.default_rng(1)
    train = tmp_path / "train.csv"
    np.savetxt(train, rng.normal(5.0, 3.0, (40, 3)), delimiter=",", header="a,b,c", comments="")
    new = rng.normal(5.0, 3.0, (11, 3))
    np.savetxt(tmp_path / "new.csv", new, delimiter=",", header="a,b,c", comments="")
    np.savetxt(tmp_path / "wide.csv", rng.normal(size=(5, 4)), delimiter=",", header="a,b,c,d", comments="")
    config = micro_config(arch="mlp", data=str(train), data_dim=3, standardize=True)
    run = untrained_run(tmp_path / "vec", config)
    rc, err = _cli(capsys, "encode", run, "--data", tmp_path / "new.csv", "--out", tmp_path / "v.npz", "--quiet",
                   "--batch-size", 4)
    assert rc == 0, err
    vae = jaxvae.load(run)
    want = vae.model.encode(data_lib.load_dataset(config).transform(new)).mean  # the training split's mean, std
    np.testing.assert_allclose(_latents(tmp_path / "v.npz")["mean"], want, rtol=1e-6, atol=1e-6)
    rc, err = _cli(capsys, "encode", run, "--data", tmp_path / "wide.csv", "--out", tmp_path / "w.npz")
    assert rc == 2 and "shape (4,), but the run takes (3,)" in err
