"""glibc malloc settings that let XLA:CPU reuse its per-execution temporaries instead of faulting them in.

XLA:CPU allocates an executable's temporaries (several GB for a training step) with malloc when the
execution starts and frees them when it ends. With glibc's defaults a block that large is served by
mmap and handed back by munmap, and the executing thread (not Python's main thread) uses its own
arena, whose heaps cannot hold a block above 64 MB. So every step faults ~1M fresh pages in and the
kernel zeroes them (measured on 2 AMD EPYC cores: bench_train's large step ~0.98M minor faults and
~4 s of system time in a ~13 s step). With one arena, no mmap and no trimming, the freed block stays
in the heap and the next execution reuses it: zero faults per step, and bench_train's steps 15%
(small) to 22-29% (large) faster (BENCHMARKS.md, "Host malloc").

glibc reads these settings only at process start (`mallopt` cannot raise the trim threshold above
2 GB, nor change the arena limit once threads have arenas), so the entry points (train.py,
evaluate.py, tools/bench_*.py, tools/ablate.py) call `reexec_for_xla_cpu()` first: it re-executes the
same command once with the variables set. `JAXMODELS_HOST_MALLOC` chooses:

  auto    (default) only when the run will use JAX's CPU backend: JAX_PLATFORMS is "cpu", or unset
          with no GPU/TPU device node (/dev/nvidia*, /dev/kfd, /dev/accel*, /dev/vfio/*) on the host;
  reuse   always;
  system  never (glibc's defaults).

Nothing is changed where any of the variables is already set (the user chose), off Linux/glibc, or
when the process was already re-executed. The cost: the process keeps its peak heap (memory freed by
a step is not returned to the OS), and all threads share one malloc arena — which slowed Python data
loading in the training process by about a third once XLA had compiled there (ShapesWorld batches,
BENCHMARKS.md "Input pipeline"); configs/shapes_tiny.py therefore makes its batches in a Grain worker
process (`data.worker_count=1`): a heap of its own, with no XLA compilation in it.
"""
from __future__ import annotations

import glob
import os
import platform
import sys

# The glibc variables (read once, at process start). Trim threshold: 2^40 bytes, i.e. never trim.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
MODE_VAR = "JAXMODELS_HOST_MALLOC"
MODES = ("auto", "reuse", "system")
_ACCELERATOR_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def _will_use_cpu_backend(env) -> bool:
  platforms = env.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0] == "cpu"
  return not any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES)


def wanted(env=None) -> bool:
  """Whether the settings should apply to this process (see the module docstring for the rules)."""
  env = os.environ if env is None else env
  mode = env.get(MODE_VAR, "auto").strip().lower() or "auto"
  if mode not in MODES:
    raise ValueError(f"{MODE_VAR}={env[MODE_VAR]!r}: expected one of {', '.join(MODES)}")
  if mode == "system" or any(k in env for k in MALLOC_ENV):
    return False
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return False
  return mode == "reuse" or _will_use_cpu_backend(env)


def reexec_for_xla_cpu() -> None:
  """Re-executes this command with `MALLOC_ENV` set when `wanted()`; returns otherwise.

  Call it first thing in a script's `__main__` block (before JAX runs anything): whatever the process
  did before is repeated by the new one.
  """
  if not wanted():
    return
  env = dict(os.environ, **MALLOC_ENV)
  print(f"jaxmodels: re-executing with {' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())} so XLA:CPU "
        f"reuses its temporaries ({MODE_VAR}=system keeps glibc's defaults)", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
