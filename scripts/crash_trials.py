"""Random kill -9 and resume trials: does a run killed at any moment end bitwise equal to one
that never stopped?

    python scripts/crash_trials.py --trials 20

Trains one uninterrupted reference run through the CLI, then for each trial starts the same run,
SIGKILLs it at a random moment (1 to --max-kills times, each at a random step, sometimes during
start-up or in the middle of a checkpoint save), resumes it with `jaxvae train --resume` until it
finishes, and compares every metrics.jsonl record (all keys but the wall-clock images_per_s) and
the final parameters' digest with the reference. Prints one line per trial and the tally.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# A model small enough that a trial takes seconds; ckpt_every 5 puts many kills near a save.
MICRO = ["--image-size", "8", "--patch-size", "4", "--hidden", "16", "--depth", "1", "--heads", "2",
         "--mlp-ratio", "2", "--z-dim", "4", "--batch-size", "8", "--beta", "1", "--lr", "1e-3",
         "--log-every", "1", "--eval-every", "10", "--ckpt-every", "5", "--keep", "2", "--quiet"]


def jaxvae(*args: str, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "a") as err:
        return subprocess.Popen([sys.executable, "-m", "jaxvae", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)


def last_step(run: Path) -> int:
    """Step of the last complete metrics record (0 if none)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


def records(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.pop("images_per_s", None)  # wall clock: the one value that may differ
        out.append(r)
    return out


def final_digest(run: Path, steps: int) -> dict:
    return json.loads((run / "checkpoints" / str(steps) / "integrity" / "metadata").read_text())


def kill_at_random(proc: subprocess.Popen, run: Path, target: int, rng: random.Random) -> str:
    """SIGKILL proc once its log reaches `target` (0: during start-up), plus a random delay."""
    if target == 0:
        delay = rng.uniform(0.5, 6.0)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        what = f"killed {delay:.1f} s after start"
    else:
        while proc.poll() is None and last_step(run) < target:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # lands anywhere in a step, a log write or a save
        what = f"killed at step ~{last_step(run)} (target {target})"
    if proc.poll() is not None:
        return f"finished before kill (target {target})"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return what


def train_command(run: Path, steps: int) -> list[str]:
    """Resume the run, or start it if a kill during start-up left no run to resume."""
    if (run / "config.json").exists():
        return ["train", "--resume", str(run), "--quiet"]
    return ["train", *MICRO, "--steps", str(steps), "--out", str(run), "--overwrite"]


def trial(i: int, args, env: dict, work: Path, reference: list[dict], ref_digest: dict) -> tuple[bool, str]:
    rng = random.Random(args.seed * 1000 + i)
    run, log = work / f"trial{i:02d}", work / f"trial{i:02d}.log"
    shutil.rmtree(run, ignore_errors=True)
    events = []
    for _ in range(rng.randint(1, args.max_kills)):
        # a target at or below the records already there means a kill during start-up or restore
        floor = last_step(run)
        target = rng.randint(floor, args.steps - 1) if floor < args.steps - 1 else 0
        proc = jaxvae(*train_command(run, args.steps), env=env, log=log)
        events.append(kill_at_random(proc, run, 0 if target == floor else target, rng))
    proc = jaxvae(*train_command(run, args.steps), env=env, log=log)
    if proc.wait() != 0:
        return False, f"trial {i}: resume failed (rc {proc.returncode}), see {log}; " + "; ".join(events)
    got = records(run)
    equal = got == reference and final_digest(run, args.steps) == ref_digest
    notes = log.read_text()
    extra = " [cleaned a torn save]" if "unfinished checkpoint" in notes else ""
    extra += " [fell back past a damaged checkpoint]" if "damaged" in notes else ""
    detail = "bitwise equal" if equal else f"DIFFERENT ({len(got)} vs {len(reference)} records)"
    if equal and not args.keep_runs:
        shutil.rmtree(run, ignore_errors=True)
    return equal, f"trial {i:2d}: {'; '.join(events)} -> {detail}{extra}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--max-kills", type=int, default=2, help="kills per trial: 1 to this many")
    p.add_argument("--jobs", type=int, default=2, help="trials run at the same time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep-runs", action="store_true", help="keep the run directories of equal trials")
    args = p.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="jaxvae-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    # One persistent compilation cache: the reference run fills it, the trials only read it.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(work / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    ref = work / "reference"
    shutil.rmtree(ref, ignore_errors=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jaxvae", "train", *MICRO, "--steps", str(args.steps),
                           "--out", str(ref)], env=env)
    if done.returncode != 0:
        print("reference run failed", file=sys.stderr)
        return 1
    reference, ref_digest = records(ref), final_digest(ref, args.steps)
    print(f"reference: {args.steps} steps, {len(reference)} records ({time.perf_counter() - t0:.0f} s); "
          f"{args.trials} trials in {work}", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(trial, i, args, env, work, reference, ref_digest) for i in range(args.trials)]
        results = []
        for f in futures:
            ok, line = f.result()
            results.append(ok)
            print(line, flush=True)
    print(f"{sum(results)}/{len(results)} trials ended bitwise equal to the uninterrupted run "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
