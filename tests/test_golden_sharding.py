"""Golden sharding tests (the MaxText habit): each paper config's tiny variant, built abstractly on
the 8 CPU devices with mesh data 2 × fsdp 2 × tensor 2, must lay out its parameters and batch
exactly as tests/data/golden_sharding/<config>.txt records (path, shape, PartitionSpec per line).

A failure prints the diff. When a change of layout is meant (new rules, a model's logical axes, a
config's towers), regenerate the files and commit them with the change:

    python tools/golden_sharding.py --write            # all; or name configs: --write blip3o_8b
"""
import jax
import pytest

from tools import golden_sharding as golden


@pytest.fixture(scope="module", params=list(golden.CONFIGS))
def built(request):
  if jax.device_count() < golden.DEVICES:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
  name = request.param
  return name, golden.layout(golden.config_of(name))


def test_layout_matches_the_golden_file(built):
  name, layout = built
  diff = golden.diff(name, golden.golden_text(name, layout))
  if diff:
    pytest.fail(f"sharding of {golden.CONFIGS[name]} changed (if meant: {golden.REGENERATE} {name}):\n"
                f"{diff}", pytrace=False)


def test_optimizer_moments_follow_their_parameters(built):
  """Adam's mu / nu of every parameter have the parameter's own PartitionSpec (a moment laid out
  otherwise would cost its full size on some device)."""
  _, (shardings, state, _) = built
  params = {path[len("model/"):]: spec for path, _, spec in golden.flat_specs(shardings, state, ("model",))}
  moments = 0
  for path, _, spec in golden.flat_specs(shardings, state, ("optimizer",)):
    for marker in ("/mu/", "/nu/"):
      if marker in path:
        moments += 1
        assert spec == params[path.split(marker, 1)[1]], path
  assert moments > 0


def test_every_golden_file_has_a_config():
  assert golden.stale_files() == [], f"delete them or add their configs to {golden.__name__}.CONFIGS"
