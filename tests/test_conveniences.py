"""The training conveniences: the learning-rate schedule, the EMA of the parameters, and what
validation scores; the lines training prints; the pictures' labels. Unit level: no full run here
(test_resume.py trains with EMA and early stopping)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config
from flax import nnx

import jaxvae
from jaxvae import data as data_lib
from jaxvae import losses, plots, sample, train
from jaxvae import run as run_lib
from jaxvae import step as step_lib
from jaxvae.checkpoint import Checkpointer
from jaxvae.config import Config, ConfigError


def vector_config(**changes):
    """A linear VAE on 4-D vectors: the step's bookkeeping (schedule, EMA) compiles in a second."""
    return Config(**{**dict(arch="linear", data_dim=4, z_dim=2, batch_size=8, beta=1.0, lr=1e-3, steps=20),
                     **changes})


def _batch(c, n=8, seed=0):
    if c.data_dim:
        return jnp.asarray(np.random.default_rng(seed).normal(size=(n, c.data_dim)), jnp.float32)
    images, _ = data_lib.make_shapes(n, c.image_size, seed=seed)
    return jnp.asarray(data_lib.to_model_range(images))


@functools.cache
def _step_fn(c):
    graphdef, _ = step_lib.init_state(c)
    return step_lib.make_train_step(graphdef, c)


def _steps(c, x, n, state=None):
    step = _step_fn(c)
    state = step_lib.init_state(c)[1] if state is None else state
    history = []
    for _ in range(n):
        state, m = step(state, x)
        history.append(jax.device_get(m))
    return state, history


# --- the learning-rate schedule --------------------------------------------------------------------

def test_cosine_schedule_with_warmup_is_logged_step_by_step():
    c = vector_config(lr=1e-3, lr_schedule="cosine", warmup_steps=3, steps=10)
    _, history = _steps(c, _batch(c), 10)
    lr = [float(m["lr"]) for m in history]
    # step t (0-based) uses: lr * t / 3 during warm-up, then lr/2 (1 + cos(pi (t - 3) / 7)) down to 0
    want = [1e-3 * t / 3 if t < 3 else 0.5e-3 * (1 + math.cos(math.pi * (t - 3) / 7)) for t in range(10)]
    np.testing.assert_allclose(lr, want, rtol=1e-5, atol=1e-10)


def test_constant_schedule_with_warmup_then_flat():
    c = vector_config(lr=2e-3, warmup_steps=4, steps=8)
    _, history = _steps(c, _batch(c), 8)
    np.testing.assert_allclose([float(m["lr"]) for m in history],
                               [0.0, 5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3, 2e-3], rtol=1e-6, atol=1e-12)


def test_a_rollbacks_lr_scale_still_multiplies_the_scheduled_rate():
    """resilience.roll_back halves state["lr_scale"]; with a schedule the step must move the
    parameters by exactly half as much and log half the rate."""
    c = vector_config(lr=1e-3, lr_schedule="cosine", warmup_steps=2, steps=10)
    x = _batch(c)
    full, h_full = _steps(c, x, 2)
    graphdef, fresh = step_lib.init_state(c)
    half_state = {**fresh, "lr_scale": jnp.float32(0.5)}
    half, h_half = _steps(c, x, 2, half_state)
    assert [float(m["lr"]) for m in h_half] == pytest.approx([0.5 * float(m["lr"]) for m in h_full], rel=1e-6)
    # step 0 has lr 0 (warm-up), so step 1 is the one move, from the same parameters and gradients
    p0 = step_lib.init_state(c)[1]["params"]
    moved_full = jax.tree.map(lambda a, b: np.asarray(a - b), full["params"], p0)
    moved_half = jax.tree.map(lambda a, b: np.asarray(a - b), half["params"], p0)
    leaf_full, leaf_half = jax.tree.leaves(moved_full)[0], jax.tree.leaves(moved_half)[0]
    assert np.abs(leaf_full).max() > 0
    np.testing.assert_allclose(leaf_half, 0.5 * leaf_full, rtol=1e-5, atol=1e-10)


def test_adam_b2_is_the_second_moments_decay():
    """Two Adam steps on one scalar with gradients 1 then 3: the second update is -lr m_hat / (sqrt(v_hat) + eps)
    with m = 0.9 (0.1) + 0.1 * 3, v = b2 (1 - b2) + (1 - b2) * 9 and the bias corrections 1 - 0.9^2, 1 - b2^2."""
    lr, eps = 1e-2, 1e-8
    for b2 in (0.999, 0.99, 0.5):
        opt = step_lib.make_optimizer(micro_config(lr=lr, adam_b2=b2))
        state = opt.init(jnp.float32(0.0))
        _, state = opt.update(jnp.float32(1.0), state)
        update, _ = opt.update(jnp.float32(3.0), state)
        m, v = 0.9 * 0.1 + 0.1 * 3, b2 * (1 - b2) + (1 - b2) * 9
        want = -lr * (m / (1 - 0.9**2)) / (math.sqrt(v / (1 - b2**2)) + eps)
        assert float(update) == pytest.approx(want, rel=1e-5), b2


@pytest.mark.parametrize("changes, message", [
    ({"adam_b2": 1.0}, "adam_b2 must be in"),
    ({"adam_b2": -0.5}, "adam_b2 must be in"),
    ({"lr_schedule": "linear"}, "unknown lr_schedule"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ({"ema": 1.0}, "ema must be in"),
    ({"ema": -0.1}, "ema must be in"),
    ({"early_stop": -1}, "early_stop must be >= 0"),
])
def test_bad_convenience_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        micro_config(**changes)


# --- the EMA ---------------------------------------------------------------------------------------

def test_ema_follows_its_recursion_in_float64():
    c = vector_config(ema=0.9)
    x = _batch(c)
    state, step = step_lib.init_state(c)[1], _step_fn(c)
    expected = jax.tree.map(lambda p: np.asarray(p, np.float64), state["params"])
    for t in range(5):
        state, _ = step(state, x)
        d = min(0.9, (1 + t) / (10 + t))  # the warm-up: 0.1, 0.18, 0.25, ... then 0.9
        expected = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * np.asarray(p, np.float64),
                                expected, state["params"])
    for got, want in zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state["ema"]),
                                                        jax.tree.leaves(state["params"]), strict=True))
    assert "ema" not in step_lib.init_state(vector_config())[1]  # off: no second copy of the parameters


def test_a_skipped_step_leaves_the_ema_unchanged():
    c = vector_config(ema=0.9)
    x = _batch(c)
    state, _ = _steps(c, x, 2)
    before = jax.device_get(state["ema"])
    state, history = _steps(c, x.at[0, 0].set(jnp.nan), 1, state)
    assert history[0]["skipped_steps"] == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state["ema"]), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_the_ema_is_checkpointed_and_is_what_load_returns(tmp_path):
    c = vector_config(ema=0.5)
    state, _ = _steps(c, _batch(c), 3)
    run = run_lib.create(tmp_path / "run", c)
    ckpt = Checkpointer(run)
    ckpt.save(3, state, {"epoch": 0, "pos": 0})
    ckpt.wait()
    graphdef, fresh = step_lib.init_state(c)
    restored, _ = ckpt.restore(fresh, 3)
    ckpt.close()
    for name in ("params", "ema"):
        for a, b in zip(jax.tree.leaves(restored[name]), jax.tree.leaves(state[name]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    loaded = jax.tree.leaves(nnx.state(jaxvae.load(run).model, nnx.Param))
    for a, b in zip(loaded, jax.tree.leaves(state["ema"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    raw = Checkpointer(run, read_only=True).restore_params(fresh["params"], ema=False)
    for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(state["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- validation scores what training optimises ------------------------------------------------------

def test_validation_dequantizes_with_fixed_noise_when_training_does():
    c = micro_config(dequantize=True)
    graphdef, state = step_lib.init_state(c)
    val = data_lib.make_shapes(32, c.image_size, seed=3)[0]
    eval_step = step_lib.make_eval_step(graphdef, c)
    got = step_lib.validation_metrics(eval_step, state["params"], val, c)
    assert got == step_lib.validation_metrics(eval_step, state["params"], val, c)  # fixed noise
    # by hand: batch i is scored on x + u_i / 127.5 with u_i from fold_in(fold_in(key, i), 1)
    model = nnx.merge(graphdef, state["params"])
    key = jax.random.key(c.seed + 2)
    by_hand = jax.jit(lambda x, k: losses.vae_loss(model, losses.dequantize(x, jax.random.fold_in(k, 1)), k,
                                                   c.beta)[1]["reconstruction_loss"])  # one compile, not op by op
    nll = []
    for i in range(2):
        k = jax.random.fold_in(key, i)
        nll.append(float(by_hand(jnp.asarray(data_lib.to_model_range(val[16 * i:16 * i + 16])), k)))
    assert got["val_reconstruction_loss"] == pytest.approx(np.mean(nll), rel=1e-6)
    clean = step_lib.validation_metrics(step_lib.make_eval_step(graphdef, c.replace(dequantize=False)),
                                     state["params"], val, c)
    assert abs(clean["val_reconstruction_loss"] - got["val_reconstruction_loss"]) > 1e-3


# --- what training prints and draws -------------------------------------------------------------------

def test_the_time_estimate_points_the_seed_preset_on_a_cpu_to_tiny():
    c = micro_config(steps=1000)
    line = train._estimate_line(c, "seed", 100, 2.0)
    assert line.startswith("2.00 steps/s: about 8 min for the remaining 900 steps")
    assert ("--preset tiny" in line) == (jax.default_backend() == "cpu")
    assert "--preset tiny" not in train._estimate_line(c, "tiny", 100, 2.0)
    assert train._duration(5400) == "1.5 h" and train._duration(30) == "30 s"


def test_finish_labels_the_reconstruction_mse_and_interpolates_held_out_images_0_and_1(tmp_path, monkeypatch):
    c = micro_config()
    graphdef, state = step_lib.init_state(c)
    dataset = data_lib.Dataset(train=data_lib.make_shapes(8, c.image_size, seed=1)[0],
                               val=data_lib.make_shapes(30, c.image_size, seed=2)[0], source="shapes")
    drawn = {}
    monkeypatch.setattr(plots, "rows_figure", lambda rows, path, title=None: drawn.update({path.name: (rows, title)}))
    monkeypatch.setattr(plots, "curves", lambda *a, **k: None)
    run_lib.create(tmp_path, c)
    train.finish(tmp_path, c, graphdef, state["params"], dataset, {})
    _, title = drawn["reconstructions.png"]
    assert "the first 10 held-out images: MSE of these 10" in title
    assert "reconstruction_mse is over the first 30 held-out images" in title
    rows, _ = drawn["interpolation.png"]
    val = data_lib.to_model_range(dataset.val)
    np.testing.assert_array_equal(rows[0][1][0], val[0])
    np.testing.assert_array_equal(rows[0][1][-1], val[1])
    # samples.png: two rows of the 20 draws `jaxvae sample RUN --n 20 --seed SEED` decodes (pictures.run_key)
    rows, title = drawn["samples.png"]
    assert [label for label, _ in rows] == ["", ""] and title == "prior samples, z ~ N(0, I)"
    model = nnx.merge(graphdef, state["params"])
    np.testing.assert_allclose(np.concatenate([images for _, images in rows]),
                               sample.sample_prior(model, 20, jax.random.key(c.seed)), atol=2e-5)


def test_kl_chart_ticks_are_whole_dimensions(monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    plots.kl_per_dim(np.array([0.5, 2.0, 0.1, 1.0]), "unused.png", mean_variance=np.ones(4))
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if -0.5 <= t <= 3.5]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    plots.plt.close(figures[0])
