"""Virtual CPU devices (`--xla_force_host_platform_device_count=N`): size XLA:CPU's thread pool so
collectives over them do not deadlock.

XLA:CPU runs every device's program on one shared intra-op pool of max(cores, N) threads, and an
in-process collective blocks its thread until all participants arrive. A device's collectives are
ordered only by when they start, so with independent collectives over overlapping groups (FSDP
all-gathers over `fsdp` beside gradient reductions over `data`) a device can hold two threads, one in
each, while another device's first collective has no thread left: all N threads then wait in
rendezvous that cannot complete, and after 40 s XLA aborts the process ("Termination timeout ...
exceeded", SIGABRT). A core dump of the abort showed exactly that: 4 threads in an `fsdp` all-gather,
4 in a `data` all-reduce, none free. A program with more independent collectives in flight (per-tower
rules over data, fsdp and tensor at once) can hold more threads per device, so the pool gets 4N: a
deadlock then needs every device holding four blocked collectives (the runs behind this and the
minimal program kept in `tests/test_host_devices.py`: BENCHMARKS.md, "Measurements behind code
choices"). Blocked threads cost no CPU time.

The pool size is read once, when the CPU client is created, from `PJRT_NPROC` (or `NPROC`), so
`ensure_collective_threads()` must run before the first JAX computation. The entry points (train.py,
evaluate.py, tools/ablate.py) and the test setup call it; a notebook calls it before touching devices:

    from jaxmodels import host_devices
    host_devices.ensure_collective_threads()     # then import jax / build meshes
"""
from __future__ import annotations

import logging
import os
import re
import sys

# Threads per virtual device: 1 is XLA's own minimum (one collective at a time); 2 gave no deadlock in
# the minimal program with 16 independent collectives, but a worker running the per-tower train test
# (three overlapping axis groups) still aborted once, so 4.
THREADS_PER_DEVICE = 4


def forced_cpu_device_count(environ=None) -> int:
  """The number of virtual CPU devices the process will create: the last
  `--xla_force_host_platform_device_count` in XLA_FLAGS, else JAX_NUM_CPU_DEVICES, else 1."""
  environ = os.environ if environ is None else environ
  counts = re.findall(r"--xla_force_host_platform_device_count=(\d+)", environ.get("XLA_FLAGS", ""))
  if counts:
    return int(counts[-1])
  value = environ.get("JAX_NUM_CPU_DEVICES", "").strip()
  return int(value) if value.isdigit() else 1


def collective_thread_count(devices: int, cores: int | None = None) -> int:
  """XLA:CPU pool size that lets collectives over `devices` virtual devices complete."""
  if cores is None:
    cores = os.cpu_count() or 1
  return max(cores, THREADS_PER_DEVICE * devices)


def ensure_collective_threads(environ=None, multiprocess: bool = False) -> int | None:
  """Sets PJRT_NPROC for N > 1 virtual CPU devices (unless the user set PJRT_NPROC or NPROC).

  One process: max(cores, 4N) threads (see the module docstring). `multiprocess` (jax.distributed,
  gloo CPU collectives): exactly N, one thread per local device, the configuration
  tests/test_multihost.py runs. There every device is a gloo rank, and with spare threads two
  collectives of one step over the same device group ran at once on one gloo communicator and their
  messages interleaved ("Received data size doesn't match expected size", then abort: 2 of 3 runs of
  that test's processes with 2N threads, none with N; XLA's own default, max(cores, N), gives the
  spare threads on any machine with more cores than devices).

  Returns the pool size now in effect, or None with one device (XLA's default stays). Call before the
  first JAX computation: once the CPU backend exists the variable is no longer read, and a warning
  says so."""
  environ = os.environ if environ is None else environ
  devices = forced_cpu_device_count(environ)
  if devices <= 1:
    return None
  for name in ("PJRT_NPROC", "NPROC"):
    if environ.get(name, "").strip().isdigit():
      return int(environ[name])
  threads = devices if multiprocess else collective_thread_count(devices)
  environ["PJRT_NPROC"] = str(threads)
  if environ is os.environ and _backends_initialized():
    logging.warning("PJRT_NPROC=%d set after JAX created its CPU backend: collectives over %d virtual "
                    "devices may deadlock; call host_devices.ensure_collective_threads() first",
                    threads, devices)
  return threads


def _backends_initialized() -> bool:
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):   # a JAX without the helper: assume nothing ran yet
    return False
