"""Shared fixtures: a micro config and one trained micro run, reused by the read-only tests; and one
persistent XLA compilation cache for the whole session."""

import importlib.util
import io
import os
import sys

import jax
import pytest

from jaxvae.config import Config

# As equinox's tests do: an implicit broadcast between arrays of different ranks (a (B,) against a
# (B, Z), say) raises instead of silently broadcasting, so a shape slip cannot hide in the maths.
jax.config.update("jax_numpy_rank_promotion", "raise")

# Most of the suite's time is XLA compiling the same few programs (a micro model's train step, its
# pictures) again in every test and in both workers. One persistent cache, in pytest's cache folder,
# lets a program compiled once be loaded everywhere else, subprocesses included (they read the
# JAX_* variables). A fresh clone starts cold, as CI does; `rm -rf .pytest_cache` makes it cold.
CACHE_SETTINGS = {"jax_compilation_cache_dir": None, "jax_persistent_cache_min_compile_time_secs": 0,
                  "jax_persistent_cache_min_entry_size_bytes": 0}


def pytest_configure(config):
    if getattr(config, "cache", None) is None:  # run with -p no:cacheprovider: compile everything afresh
        return
    folder = str(config.cache.mkdir("jaxvae-compilation-cache"))
    for name, value in {**CACHE_SETTINGS, "jax_compilation_cache_dir": folder}.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)


def micro_config(**changes) -> Config:
    """A model small enough to train in seconds on one CPU core."""
    base = dict(image_size=16, patch_size=4, hidden=32, depth=1, heads=2, mlp_ratio=2, z_dim=4,
                beta=1.0, lr=2e-3, batch_size=16, steps=20, log_every=5, eval_every=10, ckpt_every=10)
    base.update(changes)
    return Config(**base)


HAS_TENSORBOARDX = importlib.util.find_spec("tensorboardX") is not None


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="session")
def trained_run_and_terminal(tmp_path_factory):
    """A finished micro_config() run (treat as read-only), trained with --tensorboard where tensorboardX is
    installed, on a fake terminal: (run dir, what the progress bar drew). Trained once per session: the
    files that read it (test_cli, test_export, test_report) share the xdist group "trained_run"."""
    from jaxvae.train import train

    out = tmp_path_factory.mktemp("runs") / "micro"
    terminal = FakeTTY()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stderr", terminal)
        train(micro_config(), out, quiet=False, tensorboard=HAS_TENSORBOARDX)
    return out, terminal.getvalue()


@pytest.fixture(scope="session")
def trained_run(trained_run_and_terminal):
    """The session's finished micro run directory (treat as read-only)."""
    return trained_run_and_terminal[0]


def untrained_run(out, config: Config):
    """A run directory whose only checkpoint is the initial state: enough for any command that
    loads a run, without training it."""
    from jaxvae import run as run_lib
    from jaxvae.checkpoint import Checkpointer
    from jaxvae.step import init_state

    out = run_lib.create(out, config)
    _, state = init_state(config)
    ckpt = Checkpointer(out)
    ckpt.save(0, state, {"epoch": 0, "pos": 0})
    ckpt.wait()
    ckpt.close()
    return out
