r"""Golden sharding files: how each paper config's tiny variant lays out on a representative mesh.

    python tools/golden_sharding.py --write                 # regenerate every file
    python tools/golden_sharding.py --write blip3o_8b       # regenerate one
    python tools/golden_sharding.py                         # compare; prints diffs, exit 1 on a change

For every config in `CONFIGS` the train state is built abstractly (`nnx.eval_shape`: nothing is
allocated) on 8 CPU devices with mesh `MESH` (data 2 × fsdp 2 × tensor 2) and the config's own rules
(`trainer.setup.mesh_and_rules`), and one text file under tests/data/golden_sharding/<name>.txt
lists, sorted, the PartitionSpec of every model (and EMA) variable — `path  shape  spec` — and of
every key of the batch train.py's step takes (tools/plan.py's abstract batch). A change to the
rules, to a model's logical axis names or to a config shows up as a readable diff in
tests/test_golden_sharding.py; when the change is meant, regenerate and commit the files.
"""
from __future__ import annotations

import argparse
import difflib
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO / "tests" / "data" / "golden_sharding"
MESH = {"data": 2, "fsdp": 2, "tensor": 2}
DEVICES = 8
CONFIGS = {
    "pisces_8b": "configs/pisces_8b.py:tiny",
    "blip3o_8b": "configs/blip3o_8b.py:tiny",
    "blip3o_4b": "configs/blip3o_4b.py:tiny",
    "metaquery_b": "configs/metaquery_b.py:tiny",
    "metaquery_l": "configs/metaquery_l.py:tiny",
    "metaquery_xl": "configs/metaquery_xl.py:tiny",
    "blip3o_next_3b": "configs/blip3o_next_3b.py:tiny",
    "latte_flow": "configs/latte_flow.py:tiny",
    "florence_vl_3b": "configs/florence_vl_3b.py:tiny",
    "florence_vl_8b": "configs/florence_vl_8b.py:tiny",
    "shapes_tiny": "configs/shapes_tiny.py",
}
REGENERATE = "python tools/golden_sharding.py --write"


def _spec(spec) -> str:
  """P('tensor', ('data', 'fsdp'), None): one entry per array dimension."""
  return "P(" + ", ".join(repr(e) for e in spec) + ")"


def path_name(path) -> str:
  """"model/llm/embed/embedding" for a pytree key path (an nnx Variable's trailing `value` dropped)."""
  keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  return "/".join(keys[:-1] if keys and keys[-1] == "value" else keys)


def config_of(name: str):
  """The ConfigDict of `CONFIGS[name]` on `MESH` (Florence-VL prompt ids stood in, as tools/plan.py
  does: only their lengths matter)."""
  from tools.plan import load_config, stand_in_prompt_ids
  path, _, arg = CONFIGS[name].partition(":")
  config = load_config(str(REPO / path) + (f":{arg}" if arg else ""))
  config.mesh = dict(MESH)
  stand_in_prompt_ids(config)
  return config


def layout(config):
  """(state shardings, abstract state, abstract batch) of `config`'s train state, nothing allocated."""
  from flax import nnx

  from jaxmodels import sharding
  from jaxmodels.trainer.setup import mesh_and_rules, train_state_factory
  from tools.plan import batch_spec
  mesh, rules = mesh_and_rules(config)
  make_state, _ = train_state_factory(config)
  abstract_ts = nnx.eval_shape(make_state)
  _, state = nnx.split(abstract_ts)
  shardings = sharding.state_shardings(state, mesh, rules)
  return shardings, state, batch_spec(config, mesh, abstract_ts.model, rules)


def flat_specs(shardings, state, parts=("model", "ema")) -> list[tuple[str, tuple, object]]:
  """(path, shape, PartitionSpec) of every variable under `parts` of a train state, sorted by path."""
  import jax
  from flax import nnx
  is_var = lambda x: isinstance(x, nnx.Variable)   # noqa: E731
  specs = jax.tree_util.tree_flatten_with_path(shardings, is_leaf=is_var)[0]
  shapes = jax.tree.leaves(state, is_leaf=is_var)
  out = []
  for (path, sh), var in zip(specs, shapes):
    name = path_name(path)
    if name.split("/")[0] in parts:
      out.append((name, tuple(var.get_value().shape), sh.get_value().spec))
  return sorted(out, key=lambda row: row[0])


def golden_text(name: str, built=None) -> str:
  """The golden file's text for `CONFIGS[name]` (`built`: its `layout`, if already made)."""
  config = config_of(name)
  shardings, state, batch = built or layout(config)
  rules = config.sharding_rules
  mesh = ", ".join(f"{k}={v}" for k, v in MESH.items())
  lines = [f"# {CONFIGS[name]} on mesh {mesh}; config.sharding_rules: "
           f"{'defaults' if not rules else 'the config'}",
           f"# Regenerate: {REGENERATE}",
           "[parameters]  path  shape  spec"]
  lines += [f"{p}  {list(s)}  {_spec(spec)}" for p, s, spec in flat_specs(shardings, state)]
  lines.append("[batch]  key  shape  spec")
  lines += [f"{k}  {list(v.shape)}  {_spec(v.sharding.spec)}" for k, v in sorted(batch.items())]
  return "\n".join(lines) + "\n"


def golden_path(name: str) -> pathlib.Path:
  return GOLDEN_DIR / f"{name}.txt"


def diff(name: str, text: str | None = None) -> str:
  """A unified diff from the checked-in file to the recomputed text ("" when they agree)."""
  text = golden_text(name) if text is None else text
  path = golden_path(name)
  old = path.read_text() if path.is_file() else ""
  if old == text:
    return ""
  return "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                       f"{path.relative_to(REPO)} (checked in)", "recomputed"))


def stale_files() -> list[str]:
  """Golden files with no config in `CONFIGS` (left over from a removed or renamed config)."""
  return sorted(p.name for p in GOLDEN_DIR.glob("*.txt") if p.stem not in CONFIGS)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("names", nargs="*", help=f"configs to check or write (default all: {', '.join(CONFIGS)})")
  p.add_argument("--write", action="store_true", help="regenerate the files instead of comparing")
  a = p.parse_args(argv)
  unknown = sorted(set(a.names) - set(CONFIGS))
  if unknown:
    raise SystemExit(f"error: unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
  if "jax" not in sys.modules:   # the mesh needs 8 devices: fake CPU ones, set before JAX starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={DEVICES}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(REPO))
  from jaxmodels.errors import run_cli

  def go() -> int:
    changed = 0
    for name in a.names or CONFIGS:
      text = golden_text(name)
      if a.write:
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        golden_path(name).write_text(text)
        print(f"wrote {golden_path(name).relative_to(REPO)}")
      elif d := diff(name, text):
        print(d)
        changed += 1
    if a.write:
      for stale in stale_files():
        print(f"note: {GOLDEN_DIR.relative_to(REPO)}/{stale} has no config in CONFIGS (delete it)")
    elif changed:
      print(f"{changed} golden file(s) differ; if the change is meant: {REGENERATE}")
    return 1 if changed else 0

  return run_cli(go)


if __name__ == "__main__":
  sys.exit(main())
