"""Scale out on JAX's own runtime: data parallel over every device of every process.

One mesh axis, `data`, over all devices (every process's). The train state is replicated on each
device; each global batch (B, S, S, C) is sharded along B, so each device computes the loss on
B / n_devices images and XLA inserts the all-reduce of the gradients (the loss is a mean over the
global batch). The jitted train step is unchanged: jit follows the shardings of its inputs.

Multi-host: `initialize()` starts jax.distributed from --coordinator/--num-processes/--process-id
or the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; SLURM and Open MPI
are detected by JAX itself). Each process reads only its own rows of every global batch: the rows
its devices hold, of the very batch a single process would draw. The order and the flips are
functions of (seed, position) alone, so any process count trains on the same batches, and one
data position (saved by process 0) resumes every process. Process 0 alone writes the run
directory (`is_writer`); Orbax checkpoints are saved by all processes together (Orbax
coordinates them, and only process 0 writes the shared metadata).

Feeding the devices, per process:
  Batches        host gather of its rows (a grain pipeline), one batch transferred ahead of the
                 step that needs it, so the copy overlaps the step (double buffering)
  DeviceBatches  the whole uint8 training set kept on the devices when it fits; the host sends
                 only (B,) indices and flips, and the devices gather, flip and scale
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvae.config import ConfigError
from jaxvae.data.pipeline import BatchIterator

AXIS = "data"
# The training set is kept on an accelerator when it takes at most this fraction of its memory.
DEVICE_DATA_FRACTION = 0.25


# --- processes ----------------------------------------------------------------------------

def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
    """Join a multi-process run when one is asked for; returns whether one was started.

    Flags win over the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
    With a coordinator but no count or id, JAX's cluster detection (SLURM, Open MPI, ...) fills
    them in. With none of it, this is a single-process run and nothing happens. Must run before
    anything touches a JAX device.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", 0) or 0)
    if process_id < 0 and os.environ.get("JAX_PROCESS_ID", "") != "":
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if not coordinator:
        if num_processes > 1 or process_id > 0:
            raise ConfigError("--num-processes/--process-id need --coordinator HOST:PORT (process 0's address)")
        return False
    if ":" not in coordinator:
        raise ConfigError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    if num_processes and not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes or None,
                               process_id=process_id if process_id >= 0 else None)
    return True


def is_writer() -> bool:
    """Whether this process writes the run directory (metrics, pictures, summary): process 0."""
    return jax.process_index() == 0


# --- the mesh and placement ---------------------------------------------------------------

def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named `data` over the given devices (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    """Raise ConfigError unless the global batch splits evenly over the devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(f"batch_size {batch_size} does not split over {n} devices "
                          f"({jax.process_count()} process(es)): use a multiple of {n}")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def replicate(tree, mesh: Mesh):
    """Place a pytree (the same values on every process) whole on every device of the mesh."""
    sharding = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        x = np.asarray(x)  # this process's copy (all processes hold the same values)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def local_rows(batch_size: int, mesh: Mesh) -> slice:
    """The rows of a (batch_size, ...) global batch that this process's devices hold."""
    index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
    starts = sorted({idx[0].start or 0 for idx in index_map.values()})
    stops = sorted({batch_size if idx[0].stop is None else idx[0].stop for idx in index_map.values()})
    if stops[-1] - starts[0] != len(starts) * (batch_size // mesh.devices.size):
        raise ConfigError("this process's devices hold non-contiguous rows of the batch: "
                          "order jax.devices() by process")
    return slice(starts[0], stops[-1])


def shard_batch(local: np.ndarray, batch_size: int, mesh: Mesh) -> jax.Array:
    """This process's rows (B_local, ...) -> the global (B, ...) array sharded over `data`."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local, (batch_size, *local.shape[1:]))


def host_copy(tree):
    """Numpy copies of a replicated pytree: for process 0's pictures, computed on its own."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def device_memory_bytes(device=None) -> int | None:
    """The memory an accelerator offers (None where the platform does not say, e.g. CPU)."""
    stats = (device or jax.local_devices()[0]).memory_stats()
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


# --- feeding the devices ------------------------------------------------------------------

class Batches:
    """Global batches sharded over the mesh, from this process's host-gathered rows.

    One batch is always already on its way to the devices (transfers are asynchronous), so the
    copy of batch t+1 overlaps step t. Yields (B, S, S, C) float32 jax.Arrays sharded along B.
    """

    def __init__(self, images, batch_size: int, seed: int, flip: bool, mesh: Mesh):
        check_batch(batch_size, mesh)
        self.batch_size, self.mesh = batch_size, mesh
        self.stream = BatchIterator(images, batch_size, seed, flip, rows=local_rows(batch_size, mesh))
        self._next, self._state = None, self.stream.get_state()

    def _put(self) -> jax.Array:
        return shard_batch(next(self.stream), self.batch_size, self.mesh)

    def __iter__(self):
        return self

    def __next__(self) -> jax.Array:
        batch = self._next if self._next is not None else self._put()
        self._state = self.stream.get_state()  # the position after `batch`, before the prefetch
        self._next = self._put()
        return batch

    def get_state(self) -> dict:
        """The position after the last batch returned (the prefetched one is not counted)."""
        return self._state

    def set_state(self, state: dict) -> None:
        self.stream.set_state(state)
        self._next, self._state = None, self.stream.get_state()

    def close(self) -> None:
        """Stop grain's prefetch thread (it also stops when the iterator is garbage-collected)."""
        self.stream.close()


class DeviceBatches:
    """Global batches gathered on the devices from a uint8 training set kept there, replicated.

    Per step the host sends only (B,) int32 indices and (B,) flips (a few hundred bytes); each
    device gathers, mirrors and scales its own rows. The same batches as `Batches`, bit for bit.
    """

    def __init__(self, images, batch_size: int, seed: int, flip: bool, mesh: Mesh):
        check_batch(batch_size, mesh)
        self.batch_size, self.mesh = batch_size, mesh
        # Every process draws the whole (B,) index batch: the devices' gather is sharded by jit.
        self.stream = BatchIterator(images, batch_size, seed, flip, gather=False)
        self.images = replicate(np.asarray(images), mesh)  # (N, S, S, C) uint8 on every device
        # uint8 -> [-1, 1] by table lookup: the host's numpy values bit for bit (XLA may fuse
        # x / 127.5 - 1 into a multiply-add that rounds differently).
        self.levels = replicate(np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1), mesh)
        self._gather = jax.jit(_gather_flip_scale, out_shardings=batch_sharding(mesh))

    def __iter__(self):
        return self

    def __next__(self) -> jax.Array:
        draw = next(self.stream)
        return self._gather(self.images, self.levels, draw["index"], draw["mirror"])

    def get_state(self) -> dict:
        return self.stream.get_state()

    def set_state(self, state: dict) -> None:
        self.stream.set_state(state)

    def close(self) -> None:
        self.stream.close()


def _gather_flip_scale(images: jax.Array, levels: jax.Array, index: jax.Array, mirror: jax.Array) -> jax.Array:
    """(N,S,S,C) uint8, (256,) float32, (B,) int32, (B,) bool -> (B,S,S,C) float32 in [-1, 1]."""
    batch = images[index]  # (B, S, S, C) uint8
    batch = jnp.where(mirror[:, None, None, None], batch[:, :, ::-1], batch)  # axis 2 is width
    return levels[batch.astype(jnp.int32)]


def make_batches(images, batch_size: int, seed: int, flip: bool, mesh: Mesh, on_device: bool | None = None):
    """The training batches for a mesh: on the devices when the data fits there, else from the host.

    on_device None decides: only on accelerators (a CPU "device" is host memory already, where the
    host pipeline's prefetch thread overlaps the step) and when the uint8 set takes at most
    DEVICE_DATA_FRACTION of one device's memory.
    """
    if on_device is None:
        limit = device_memory_bytes() if jax.default_backend() != "cpu" else None
        on_device = limit is not None and _nbytes(images) <= DEVICE_DATA_FRACTION * limit
    kind = DeviceBatches if on_device else Batches
    return kind(images, batch_size, seed, flip, mesh)


def _nbytes(images) -> int:
    return int(np.prod(images.shape)) * np.dtype(images.dtype).itemsize


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
