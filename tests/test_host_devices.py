"""XLA:CPU thread-pool sizing for virtual CPU devices (jaxmodels.host_devices).

The subprocess test runs a program that deadlocked (and was aborted by XLA after 40 s) in every run
with XLA's default pool of one thread per device: two independent collectives over overlapping device
groups of a (data=2, fsdp=4) mesh, dispatched 300 times.
"""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from jaxmodels import host_devices

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_forced_device_count_reads_the_last_xla_flag_then_jax_num_cpu_devices():
  count = host_devices.forced_cpu_device_count
  assert count({}) == 1
  assert count({"XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_cpu_enable_fast_math=false "
                             "--xla_force_host_platform_device_count=8"}) == 8
  assert count({"JAX_NUM_CPU_DEVICES": "6"}) == 6
  assert count({"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_NUM_CPU_DEVICES": "6"}) == 2


def test_pool_size_is_four_threads_per_device_or_the_cores_and_the_user_setting_wins():
  assert host_devices.collective_thread_count(8, cores=2) == 32
  assert host_devices.collective_thread_count(8, cores=64) == 64
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  threads = host_devices.ensure_collective_threads(env)
  assert threads == int(env["PJRT_NPROC"]) == max(32, os.cpu_count() or 1)
  assert host_devices.ensure_collective_threads({}) is None            # one device: nothing to size
  gloo = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}      # one thread per device
  assert host_devices.ensure_collective_threads(gloo, multiprocess=True) == 4 == int(gloo["PJRT_NPROC"])
  user = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "NPROC": "40"}
  assert host_devices.ensure_collective_threads(user) == 40 and "PJRT_NPROC" not in user


PROGRAM = textwrap.dedent("""
  import os
  from jaxmodels import host_devices
  threads = host_devices.ensure_collective_threads()
  import jax, jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)

  def body(x, w1, w2):          # two independent chains, each ending in a collective
    a, b = x, x
    for _ in range(3):
      a, b = jnp.tanh(a @ w1), jnp.tanh(b @ w2)
    return (jax.lax.all_gather(a, "fsdp", tiled=True).sum() + jax.lax.psum(b, "data").sum()
            + jax.lax.psum(a.sum(), ("data", "fsdp")))

  f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("data", "fsdp"), P(), P()), out_specs=P(),
                            check_vma=False))
  x = jax.device_put(jnp.full((256, 512), 0.01), NamedSharding(mesh, P("data", "fsdp")))
  w1, w2 = (jax.device_put(jnp.eye(128) * s, NamedSharding(mesh, P())) for s in (0.5, 0.7))
  for i in range(300):
    out = f(x, w1, w2)
    if i % 50 == 0:
      out.block_until_ready()
  out.block_until_ready()
  names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
  print("pool", threads, "eigen_threads", names.count("tf_XLAEigen"), "done", flush=True)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names from /proc")
def test_collectives_over_overlapping_groups_complete_with_the_sized_pool():
  env = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  words = out.stdout.split()
  pool, eigen = int(words[words.index("pool") + 1]), int(words[words.index("eigen_threads") + 1])
  assert pool >= 16 and eigen == pool, out.stdout          # XLA's intra-op pool took the size we set
