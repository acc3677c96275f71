"""jaxvae.evaluate and `jaxvae evaluate`: chunking, memory cap, bits/dim, quality, MI, bad inputs, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import untrained_run

import jaxvae
from jaxvae import cli, sample
from jaxvae.config import Config, ConfigError
from jaxvae.evaluation import Plan, bytes_per_sample, evaluate, format_table, plan_chunks
from jaxvae.latents import mutual_information, plot_kl_per_dim
from jaxvae.model import build

# A transformer small enough to decode 5000 samples per image quickly on a CPU.
TINY_IMAGES = Config(image_size=8, channels=1, patch_size=4, hidden=16, depth=1, heads=2, mlp_ratio=2, z_dim=4,
                     beta=1.0, batch_size=8, steps=4, log_every=2, eval_every=4, ckpt_every=4, val_fraction=0.02)


def uint8_images(n, c=TINY_IMAGES, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *c.data_shape), dtype=np.uint8)


def test_plan_chunks_stays_under_the_cap():
    assert plan_chunks(k=10, n=1000, sample_bytes=100, cap_bytes=100_000) == Plan(examples=100, samples=10, chunks=1)
    assert plan_chunks(k=10, n=3, sample_bytes=100, cap_bytes=100_000) == Plan(examples=3, samples=10, chunks=1)
    assert plan_chunks(k=5000, n=10, sample_bytes=100, cap_bytes=100_000) == Plan(examples=1, samples=1000, chunks=5)
    p = plan_chunks(k=5001, n=10, sample_bytes=100, cap_bytes=100_000)
    assert p.examples == 1 and p.samples * 100 <= 100_000 and p.samples * p.chunks >= 5001
    assert plan_chunks(k=7, n=5, sample_bytes=10**9, cap_bytes=1) == Plan(examples=1, samples=1, chunks=7)


# pPCA's linear VAE with the shapes of test_evaluate_linear.py (D 6, Z 3, N 512, K 100): the same
# compiled evaluation serves both files.
LINEAR = Config(arch="linear", data_dim=6, z_dim=3, decoder_scale_sharing="shared", decoder_scale="log_std",
                posterior_scale="log_std", beta=1.0)


@pytest.fixture(scope="module")
def vectors():
    return LINEAR, build(LINEAR), np.random.default_rng(0).normal(size=(512, 6)).astype(np.float32)


def test_the_result_does_not_depend_on_the_memory_cap(vectors):
    c, model, x = vectors
    wide = evaluate(model, x, 100, config=c, per_example=True)
    cap_mb = 7 * bytes_per_sample(c) / 2**20  # room for 7 decodes per call
    narrow = evaluate(model, x[:40], 100, config=c, per_example=True, memory_cap_mb=cap_mb)
    assert wide["plan"] == {"examples": 256, "samples": 100, "chunks": 1}
    assert narrow["plan"] == {"examples": 1, "samples": 7, "chunks": 15}  # 105 >= 100: the rest is masked
    for key in ("iwae", "negative_elbo", "kl"):
        np.testing.assert_allclose(narrow["per_example"][key], wide["per_example"][key][:40], rtol=1e-5, atol=1e-5)


def test_reconstruction_quality_matches_the_pixel_mse():
    c = TINY_IMAGES.replace(arch="mlp")
    model = build(c)
    images = uint8_images(4, c)
    r = evaluate(model, images, 2, config=c, per_example=True)
    x = images.astype(np.float32) / 127.5 - 1.0
    recon = sample.reconstruct(model, x)
    per_image = [sample.pixel_mse(x[i:i + 1], recon[i:i + 1]) for i in range(4)]
    np.testing.assert_allclose(r["per_example"]["mse"], per_image, rtol=1e-4)
    np.testing.assert_allclose(r["per_example"]["psnr"], -10 * np.log10(per_image), rtol=1e-4)
    assert all(-1.0 <= s <= 1.0 for s in r["per_example"]["ssim"])


def test_bits_per_dim_flags_follow_dequantization_and_likelihood():
    base = TINY_IMAGES.replace(arch="mlp")
    images = uint8_images(4, base)
    deq = evaluate(build(base.replace(dequantize=True)), images, 2, config=base.replace(dequantize=True))
    assert deq["bits_per_dim_valid_bound"] is True
    bern = base.replace(likelihood="bernoulli")
    binary = (images > 127).astype(np.uint8) * 255
    r = evaluate(build(bern), binary, 2, config=bern, per_example=True)
    assert r["bits_per_dim_valid_bound"] is True  # a discrete likelihood: no change of variables
    assert r["bits_per_dim"]["mean"] == pytest.approx(np.mean(-np.array(r["per_example"]["iwae"])) / (64 * math.log(2)),
                                                      rel=1e-6)
    assert evaluate(build(bern), images, 2, config=bern)["bits_per_dim_valid_bound"] is False
    floats = evaluate(build(base), images.astype(np.float32) / 127.5 - 1, 2, config=base)
    assert floats["bits_per_dim"] is None  # float input: its quantization is unknown


def test_mutual_information_at_its_two_extremes():
    m, z = 400, 2
    key = jax.random.key(0)
    # Every x has the same posterior: z says nothing about x, and q(z) = q(z|x) exactly.
    same = mutual_information(np.full((m, z), 0.3), np.full((m, z), np.log(0.5)), key, 2**26)
    assert abs(same) < 1e-5
    # Narrow posteriors far apart: z identifies x, I = log M (the estimator's ceiling).
    means = np.stack([np.arange(m) * 100.0, np.zeros(m)], axis=1)
    apart = mutual_information(means, np.full((m, z), np.log(0.01)), key, 2**26)
    assert apart == pytest.approx(math.log(m), abs=1e-4)
    # In between: two clusters of posteriors, I = log 2 when they are far apart and each is wide
    # enough that q(z) within a cluster is q(z|x).
    two = np.repeat([[0.0, 0.0], [50.0, 0.0]], m // 2, axis=0)
    halves = mutual_information(two, np.zeros((m, z)), key, 2**26)
    assert halves == pytest.approx(math.log(2), abs=1e-4)
    # Chunked over rows under a tiny cap, the same number.
    assert mutual_information(means, np.full((m, z), np.log(0.01)), key, 10_000) == pytest.approx(apart, abs=1e-4)


@pytest.mark.parametrize("bad, message", [
    (lambda x: x[:, :5], r"shape \(512, 5\).*\(N, 6\)"),
    (lambda x: x[None], r"shape \(1, 512, 6\)"),
    (lambda x: x[:0], "no examples"),
    (lambda x: np.where(np.arange(6) == 2, np.nan, x).astype(np.float32), "NaN"),
    (lambda x: x.astype(np.int64), "dtype int64"),
])
def test_bad_data_is_one_clear_error(vectors, bad, message):
    c, model, x = vectors
    with pytest.raises(ConfigError, match=message):
        evaluate(model, bad(x), 2, config=c)


def test_bad_arguments_are_one_clear_error(vectors):
    c, model, x = vectors
    for k in (0, -3, 2.5):
        with pytest.raises(ConfigError, match="iw_samples must be a positive integer"):
            evaluate(model, x, k, config=c)
    with pytest.raises(ConfigError, match="memory_cap_mb"):
        evaluate(model, x, 2, config=c, memory_cap_mb=0)
    with pytest.raises(ConfigError, match="config"):
        evaluate(model, x, 2)  # a bare model does not say what data it takes


def test_table_json_and_chart(vectors, tmp_path):
    c, model, x = vectors
    r = jaxvae.evaluate(model, x, 100, config=c)  # the package-level call
    json.dumps(r, allow_nan=False)  # plain JSON: no NaN, no infinity, no numpy types
    table = format_table(r)
    for label in ("-ELBO", "IWAE_100", "active units", "mutual information", "KL per latent dim", "MSE"):
        assert label in table
    assert "bits/dim" not in table  # vectors
    assert r["kl_per_dim"] == sorted(r["kl_per_dim"], reverse=True)
    assert sorted(r["kl_per_dim_index"]) == [0, 1, 2]
    plot_kl_per_dim(r, tmp_path / "kl.png")
    assert (tmp_path / "kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A tiny transformer run as `jaxvae train` lays it out: config.json, meta.json and a checkpoint
    (of the initial parameters: what is measured here is the plumbing, not the training)."""
    return untrained_run(tmp_path_factory.mktemp("runs") / "tiny", TINY_IMAGES)


@pytest.mark.slow
def test_cli_evaluate_k5000_prints_writes_json_and_leaves_the_run_alone(image_run, tmp_path, capsys, monkeypatch):
    """K = 5000 under a 1 MiB cap: many chunks of samples, one image at a time, and the same numbers."""
    before = snapshot(image_run)
    monkeypatch.chdir(tmp_path)
    args = ["evaluate", str(image_run), "--iw-samples", "5000", "--limit", "2", "--memory-cap-mb", "1"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "IWAE_5000 log p(x) bound" in printed and "bits/dim (IWAE)" in printed and "SSIM" in printed
    assert list(tmp_path.iterdir()) == []  # no --out: nothing written anywhere

    out = tmp_path / "eval" / "tiny.json"
    assert cli.main([*args, "--split", "train", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["examples"] == 2 and r["split"] == "train" and r["iw_samples"] == 5000 and r["data"] == "shapes"
    plan = r["plan"]
    assert plan["examples"] * plan["samples"] * bytes_per_sample(TINY_IMAGES) <= 2**20 and plan["chunks"] > 1
    assert list(r["iwae_by_k"]) == ["1", "10", "100", "1000", "5000"]
    assert all(math.isfinite(r[k]["mean"]) for k in ("iwae", "negative_elbo", "kl", "mse", "psnr", "ssim"))
    d = 8 * 8 * 1  # bits/dim is linear in the NLL, so the means obey the formula too
    expect = (-r["iwae"]["mean"] + d * math.log(127.5)) / (d * math.log(2))
    assert r["bits_per_dim"]["mean"] == pytest.approx(expect, rel=1e-6)
    assert r["bits_per_dim_valid_bound"] is False and "--dequantize" in r["bits_per_dim_note"]
    assert Path(r["kl_plot"]) == tmp_path / "eval" / "tiny_kl.png" and Path(r["kl_plot"]).is_file()
    assert snapshot(image_run) == before  # evaluate never writes into the run


@pytest.mark.parametrize("args, message", [
    (["/no/such/run"], "does not exist"),
    (["RUN", "--split", "test"], "unknown split 'test'"),
    (["RUN", "--iw-samples", "0"], "iw_samples must be a positive integer"),
    (["RUN", "--limit", "-1"], "--limit must be >= 0"),
    (["RUN", "--data", "shapes", "--split", "train"], "--split picks from the run's own data"),
])
def test_cli_bad_input_is_one_line(image_run, capsys, args, message):
    args = [str(image_run) if a == "RUN" else a for a in args]
    assert cli.main(["evaluate", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxvae: error:") and message in err and "\n" not in err


@pytest.mark.slow
def test_cli_vector_run_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(300, 2)) @ rng.normal(size=(2, 4)) + 0.1 * rng.normal(size=(300, 4)) + 3.0
    header = "w,x,y,z\n"
    (tmp_path / "train.csv").write_text(header + "\n".join(",".join(map(str, r)) for r in signal[:240]))
    (tmp_path / "test.csv").write_text(header + "\n".join(",".join(map(str, r)) for r in signal[240:]))
    np.save(tmp_path / "wrong.npy", signal[:, :3])
    run = tmp_path / "run"
    assert cli.main(["train", "--arch", "linear", "--data", str(tmp_path / "train.csv"), "--standardize",
                     "--z-dim", "2", "--beta", "1", "--lr", "0.01", "--steps", "12", "--batch-size", "16",
                     "--kl-warmup-steps", "8", "--free-bits", "0.05", "--decoder-std", "shared",
                     "--log-every", "4", "--eval-every", "12", "--ckpt-every", "12", "--out", str(run),
                     "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data_dim"] == 4 and config["arch"] == "linear" and config["standardize"] is True
    assert config["kl_warmup_steps"] == 8 and config["free_bits"] == 0.05
    assert config["decoder_scale_sharing"] == "shared" and config["decoder_variance"] == "learned"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # beta logged at steps 4, 8, 12 is the weight used by that step: step t-1 of 8, so 3/8, 7/8, 1
    assert [m["beta"] for m in metrics] == pytest.approx([3 / 8, 7 / 8, 1.0])
    assert all("kl_objective" in m for m in metrics)
    assert json.loads((run / "summary.json").read_text())["reconstruction_mse"] > 0
    assert "vector data (D = 4)" in (run / "report.html").read_text()  # the report knows vectors have no images

    out = tmp_path / "test_eval.json"
    assert cli.main(["evaluate", str(run), "--data", str(tmp_path / "test.csv"), "--iw-samples", "20",
                     "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["examples"] == 60 and r["data_kind"] == "vectors" and r["bits_per_dim"] is None
    assert r["iwae"]["mean"] >= -r["negative_elbo"]["mean"] - 3 * r["iwae_minus_elbo"]["se"]
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--data", str(tmp_path / "wrong.npy")]) == 2
    assert "has D = 3 columns but the run was trained on D = 4" in capsys.readouterr().err


# --- dequantization and the bits/dim offset, against a closed form --------------------------------

def _constant_model(c):
    """q(z|x) = N(0, I) = p(z) (encoder head zeroed) and p(x|z) = N(-1, sigma^2) whatever z (decoder
    head zeroed, bias -1): log w_k = log p(x|z_k) exactly, so every figure has a closed form."""
    model = build(c)
    for head, bias in ((model.encoder.head, 0.0), (model.decoder.head, -1.0)):
        head.kernel[...] = np.zeros(head.kernel.shape, np.float32)
        head.bias[...] = np.full(head.bias.shape, bias, np.float32)
    return model


def test_evaluate_dequantizes_and_converts_bits_per_dim_to_8_bit_units():
    """Black images (pixel 0 -> -1) under N(-1, (1/127.5)^2): sigma is one 8-bit level. Dequantized,
    each pixel is 0 + u, u ~ U[0, 1), so in 8-bit units its NLL is 1/2 log 2 pi + u^2 / 2, on average
    1/2 log 2 pi + 1/6 nats; in the model's [-1, 1] units it is D log 127.5 less (the Jacobian).
    Without dequantization u = 0 exactly."""
    c = TINY_IMAGES.replace(dequantize=True, decoder_variance="fixed", decoder_std=1 / 127.5)
    model, data = _constant_model(c), np.zeros((128, *c.data_shape), np.uint8)
    d, half_log_2pi = int(np.prod(c.data_shape)), 0.5 * math.log(2 * math.pi)
    r = evaluate(model, data, 2, config=c)
    assert r["kl"]["mean"] == pytest.approx(0.0, abs=1e-6)
    nats_8bit = half_log_2pi + 1 / 6  # per dim; the draw's u^2/2 has sd 0.15 per pixel, 0.0017 over 128 x 64
    assert r["reconstruction_nll"]["mean"] / d == pytest.approx(nats_8bit - math.log(127.5), abs=0.007)
    assert r["bits_per_dim"]["mean"] == pytest.approx(nats_8bit / math.log(2), abs=0.01)
    assert r["bits_per_dim_valid_bound"]
    clean = evaluate(model, data, 2, config=c.replace(dequantize=False))
    assert clean["reconstruction_nll"]["mean"] / d == pytest.approx(half_log_2pi - math.log(127.5), rel=1e-5)
    assert clean["bits_per_dim"]["mean"] == pytest.approx(half_log_2pi / math.log(2), rel=1e-5)


def test_active_units_threshold_the_variance_not_the_std():
    """Posterior means whose variance over the examples is 1, 0.0025, 0.02 and 1e-6: std 1, 0.05,
    0.14 and 0.001. Var > 0.01 makes dims 0 and 2 active; a std > 0.01 rule would count three."""
    from jaxvae import latents

    variances = np.array([1.0, 0.0025, 0.02, 1e-6])
    signs = np.where(np.arange(1000) % 2 == 0, 1.0, -1.0)[:, None]  # +-sqrt(var): exact population variance
    mean = signs * np.sqrt(variances)[None]
    log_std = np.zeros_like(mean)
    kl = 0.5 * mean**2
    r = latents.collapse(mean, log_std, kl, jax.random.key(0), 2**20)
    np.testing.assert_allclose(r["latent_activity"], variances, rtol=1e-9)
    assert r["active_units"] == 2
    stats = latents.LatentStats.of(mean, log_std)
    np.testing.assert_allclose(stats.mean_variance, variances, rtol=1e-6)
    assert stats.active == 2


def test_evaluate_and_traverse_count_the_same_active_units_at_the_threshold(vectors):
    """One estimator of Var_x E_q[z_d|x], the population variance (ddof 0), for evaluate's collapse()
    and the LatentStats of the report and `jaxvae traverse`. Two examples at +-a have population
    variance a^2 and sample variance 2 a^2: with a^2 = 0.008 the first is below the 0.01 threshold
    and the second above, so a ddof-1 estimator coming back in either place changes a count."""
    from jaxvae import latents

    a2 = np.array([0.008, 0.004, 0.02, 0.3])  # ddof 0: active no, no, yes, yes; ddof 1 (2 a^2): yes, no, yes, yes
    mean = np.stack([np.sqrt(a2), -np.sqrt(a2)])  # (2, Z)
    log_std = np.zeros_like(mean)
    r = latents.collapse(mean, log_std, 0.5 * mean**2, jax.random.key(0), 2**20)
    stats = latents.LatentStats.of(mean, log_std)
    np.testing.assert_allclose(r["latent_activity"], a2, rtol=1e-12)
    np.testing.assert_allclose(stats.mean_variance, a2, rtol=1e-12)
    assert r["active_units"] == stats.active == 2
    assert r["active_unit_threshold"] == latents.ACTIVE_VARIANCE == 0.01
    # and through the public paths: evaluate() and the statistics traverse draws, on the same examples
    c, model, x = vectors
    x = x[:16]  # few examples: ddof 1 would be 16/15 of ddof 0
    r = evaluate(model, x, 100, config=c)
    stats = latents.latent_stats(model, x)
    np.testing.assert_allclose(r["latent_activity"], stats.mean_variance, rtol=1e-5)
    assert r["active_units"] == stats.active


def test_evaluates_kl_chart_is_the_one_chart_sorted_with_the_active_dims_blue(monkeypatch):
    """latents.plot_kl_per_dim draws plots.kl_per_dim: bars in evaluate's sorted order, named by their
    dims; blue above the threshold, gray below; the threshold dashed on the variance panel."""
    from matplotlib.colors import to_hex

    from jaxvae import latents, plots

    a2 = np.array([0.008, 0.004, 0.02, 0.3])  # active: dims 2 and 3
    mean = np.stack([np.sqrt(a2), -np.sqrt(a2)])
    r = latents.collapse(mean, np.zeros_like(mean), 0.5 * mean**2, jax.random.key(0), 2**20)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    plot_kl_per_dim(r, "unused.png")
    kl_axes, variance_axes = figures[0].axes
    np.testing.assert_allclose([b.get_height() for b in kl_axes.patches], 0.5 * a2[[3, 2, 0, 1]], rtol=1e-12)
    assert [t.get_text() for t in kl_axes.get_xticklabels()] == ["3", "2", "0", "1"]
    assert [to_hex(b.get_facecolor()) for b in kl_axes.patches] == [to_hex("tab:blue")] * 2 + [to_hex("tab:gray")] * 2
    np.testing.assert_allclose([b.get_height() for b in variance_axes.patches], a2[[3, 2, 0, 1]], rtol=1e-12)
    assert variance_axes.lines[0].get_ydata()[0] == latents.ACTIVE_VARIANCE
    plots.plt.close(figures[0])
