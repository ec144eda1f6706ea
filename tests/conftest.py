"""Test setup: 8 virtual CPU devices for sharding tests (must precede the first jax import)."""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from jaxmodels import host_devices  # noqa: E402

# Four XLA:CPU threads per virtual device (PJRT_NPROC, inherited by the tests' subprocesses except
# test_multihost's gloo processes, which train.py sizes itself): with one, the 8-device train step's
# collectives deadlock now and then and XLA aborts the worker.
host_devices.ensure_collective_threads()

import pathlib  # noqa: E402

import pytest  # noqa: E402

# Real benchmark inputs (GenEval prompts, ColorBench samples) committed with their licences.
TEST_DATA = pathlib.Path(__file__).resolve().parent / "data"


def pytest_configure(config):
  """A persistent XLA compilation cache: the trainer tests compile the same tiny train step again in
  every run and subprocess (resume, SIGTERM, chaos kills, multi-host, ablations); with the cache the
  later compiles are disk reads. One directory per xdist worker (its id is set by now; jax, which
  reads these variables on import, is not imported yet), inherited by the worker's subprocesses."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") and not os.environ.get("JAXMODELS_TEST_XLA_CACHE"):
    return                                   # the user's own cache directory wins
  worker = getattr(config, "workerinput", {}).get("workerid", "main")   # xdist workers inherit the
  os.environ["JAXMODELS_TEST_XLA_CACHE"] = "1"                          # controller's env: overwrite
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "jaxmodels-test-xla-cache",
                                                         worker)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """One TFDS data dir per test session, so the ShapesWorld tiny build is made once and shared."""
  return str(tmp_path_factory.mktemp("tfds"))


# The slowest modules first: with `-n 2 --dist loadfile` (the test command) each module is one unit of
# work, handed to the workers in collection order, so a long module left for the end runs alone.
SLOW_MODULES = ("test_multihost.py", "test_train.py", "test_reliability.py", "test_unified_papers.py",
                "test_florence_vl.py", "test_unified.py", "test_bench_smoke.py")


def pytest_collection_modifyitems(session, config, items):
  rank = {name: i for i, name in enumerate(SLOW_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: order within a module kept
