"""Test setup: 8 virtual CPU devices for sharding tests (must precede the first jax import)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pathlib  # noqa: E402

import pytest  # noqa: E402

# The steering repo's shared/ folder sits beside the checkout (../shared), in CI as in development.
SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """Real benchmark inputs (GenEval prompts, ColorBench samples) from ../shared/data."""
  if not SHARED_DATA.is_dir():
    pytest.fail(f"{SHARED_DATA} is missing: the tests need the shared/ folder beside the checkout")
  return SHARED_DATA


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """One TFDS data dir per test session, so the ShapesWorld tiny build is made once and shared."""
  return str(tmp_path_factory.mktemp("tfds"))
