"""What the benchmarks share: one measured train step in its own process, peak FLOP rates.

Every measurement runs in its own subprocess (a fresh JAX, its device count set before it starts, an
honest peak RSS), and prints one JSON line. `measure_ours` times jaxvae's jitted train step on
random images in [-1, 1] (the data pipeline is benchmarked apart, in data.py). interleave.py
times it beside ../shared/bench/seed_ref.py, the chapter's model in linen, in one process.

MFU = (FLOPs of one compiled step, from XLA's cost analysis) / (step time) / (peak of the device
at that precision), with the peaks in PEAK_TFLOPS below.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED_REF = REPO.parent / "shared" / "bench" / "seed_ref.py"  # ../shared/bench/seed_ref.py

# Dense peak TFLOP/s by device kind (substring of jax's device_kind) and precision. The GPU
# figures are NVIDIA's datasheet numbers without sparsity. "fp32" is a matmul at JAX's default
# precision, which on these GPUs runs on the TF32 tensor cores.
PEAK_TFLOPS = {
    "H100 PCIe": {"bf16": 756.0, "fp32": 378.0},
    "H100": {"bf16": 989.4, "fp32": 494.7},  # SXM (80GB HBM3)
    "H200": {"bf16": 989.4, "fp32": 494.7},
    "A100": {"bf16": 312.0, "fp32": 156.0},
}


class BenchError(RuntimeError):
    """A benchmark that cannot run here, with the one line that says why."""


def seed_ref_path() -> Path:
    if not SEED_REF.is_file():
        raise BenchError(f"the chapter's reference model is missing: expected {SEED_REF} "
                         "(../shared/bench/seed_ref.py relative to the repository root)")
    return SEED_REF


# --- the CPU's peak -----------------------------------------------------------------------

def cpu_info() -> dict:
    """Cores this process may use, the nominal clock (GHz) and the widest FMA vectors."""
    flags, mhz, model = set(), None, ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
        mhz = float(re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M).group(1))
        model = re.search(r"^model name\s*:\s*(.*)$", text, re.M).group(1).strip()
    except (OSError, AttributeError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4  # fp32 lanes per FMA
    return {"model": model, "cores": cores, "ghz": (mhz or 0) / 1000, "fp32_lanes": lanes,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def cpu_peak_tflops(precision: str, info: dict | None = None) -> float | None:
    """cores x 2 FMA pipes x fp32 lanes x 2 FLOP per FMA x clock; bf16 doubles it where the CPU
    has AVX512_BF16 (vdpbf16ps: two bf16 products per fp32 lane). Two FMA pipes per core hold for
    AMD Zen 4/5 and Intel server cores since Skylake-SP. An estimate from /proc/cpuinfo: turbo
    clocks above the nominal one would raise it, a shared machine lowers what one run can reach.
    """
    info = info or cpu_info()
    if not info["ghz"]:
        return None
    fp32 = info["cores"] * 2 * info["fp32_lanes"] * 2 * info["ghz"] / 1000
    return fp32 * (2 if precision == "bf16" and (info["avx512_bf16"] or info["amx_bf16"]) else 1)


def peak_tflops(device_kind: str, platform: str, precision: str) -> float | None:
    if platform == "cpu":
        return cpu_peak_tflops(precision)
    for name, peaks in PEAK_TFLOPS.items():  # the most specific name first (H100 PCIe before H100)
        if name.lower() in device_kind.lower():
            return peaks.get(precision)
    return None


# --- subprocesses -------------------------------------------------------------------------

def _run(cmd: list[str], env: dict | None = None, timeout: float = 900) -> str:
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BenchError(f"{' '.join(cmd[1:3])} failed ({proc.returncode}): {' | '.join(tail)}")
    return proc.stdout


def measure_ours(preset: str, batch: int, precision: str = "fp32", steps: int = 6, windows: int = 3,
                 devices: int = 1) -> dict:
    """jaxvae's train step in a fresh process; `devices` > 1 simulates that many CPU devices."""
    env = {"JAX_NUM_CPU_DEVICES": str(devices)} if devices > 1 else {}  # read when JAX's CPU backend starts
    cmd = [sys.executable, str(Path(__file__).with_name("step_worker.py")), "--preset", preset,
           "--batch", str(batch), "--precision", precision, "--steps", str(steps), "--windows", str(windows)]
    lines = [ln for ln in _run(cmd, env).splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])
