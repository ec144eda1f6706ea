"""jaxmodels.host_malloc: when the glibc settings apply, and that they stop XLA:CPU's per-execution
page faults (a subprocess re-executes itself and counts minor faults around repeated executions)."""
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from jaxmodels import host_malloc

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc malloc settings")
def test_which_processes_get_the_settings(monkeypatch):
  monkeypatch.setattr(host_malloc, "_ACCELERATOR_NODES", ())          # this host: no GPU/TPU nodes
  assert host_malloc.wanted({})
  assert host_malloc.wanted({"JAX_PLATFORMS": "cpu"})
  assert not host_malloc.wanted({"JAX_PLATFORMS": "cuda,cpu"})       # the first platform decides
  assert not host_malloc.wanted({"JAXMODELS_HOST_MALLOC": "system"})
  assert not host_malloc.wanted({"MALLOC_ARENA_MAX": "4"})            # the user's own choice stays
  assert host_malloc.wanted({"JAXMODELS_HOST_MALLOC": "reuse", "JAX_PLATFORMS": "tpu"})
  monkeypatch.setattr(host_malloc, "_ACCELERATOR_NODES", ("/",))      # an accelerator node exists
  assert not host_malloc.wanted({})
  assert host_malloc.wanted({"JAX_PLATFORMS": "cpu"})
  with pytest.raises(ValueError, match="JAXMODELS_HOST_MALLOC='fast': expected one of auto, reuse, system"):
    host_malloc.wanted({"JAXMODELS_HOST_MALLOC": "fast"})


# A jitted program whose [4096, 4096] f32 intermediate (64 MB) is a temporary of every execution.
_PROGRAM = textwrap.dedent("""
    import json, os, resource
    from jaxmodels import host_malloc
    host_malloc.reexec_for_xla_cpu()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda a, b: ((a @ b) @ b.T).sum())
    a, b = jnp.ones((4096, 64)), jnp.ones((64, 4096))
    for _ in range(3):
      f(a, b).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
      f(a, b).block_until_ready()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4
    print(json.dumps({"faults": faults, "arena_max": os.environ.get("MALLOC_ARENA_MAX")}))
""")


def _faults_per_execution(mode: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in host_malloc.MALLOC_ENV}
  env.update(JAXMODELS_HOST_MALLOC=mode, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc malloc settings")
def test_reexec_stops_the_per_execution_page_faults():
  default, reused = _faults_per_execution("system"), _faults_per_execution("reuse")
  assert default["arena_max"] is None and reused["arena_max"] == "1"   # re-executed with the settings
  assert default["faults"] > 8000, default          # 64 MB of fresh 4 KiB pages (16384) per execution
  assert reused["faults"] < 0.05 * default["faults"], (default, reused)
