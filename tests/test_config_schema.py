"""The run sections' schema (jaxmodels/config_schema.py): every key the code reads is declared there
with its one default, can be set from the command line, and a config missing keys gets them."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from jaxmodels import config_schema as S
from jaxmodels.config_utils import check_overrides
from jaxmodels.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CODE = [*sorted((ROOT / "jaxmodels").rglob("*.py")), *sorted((ROOT / "input_pipeline").rglob("*.py")),
        *sorted((ROOT / "tools").rglob("*.py")),
        *(ROOT / f"{name}.py" for name in ("train", "evaluate", "sample", "serve"))]
CHECKED = ("train", "optim", "checkpoint", "init", "evals", "rl", "data")   # mesh: any axis names
VIEWS = ("get", "to_dict", "keys", "items", "values", "update", "unlocked", "lock", "get_ref",
         "copy_and_resolve_references", "to_json_best_effort")


def _leaf_paths(keys: dict, prefix: str = ""):
  for name, key in keys.items():
    if isinstance(key, dict):
      yield from _leaf_paths(key, f"{prefix}{name}.")
    else:
      yield f"{prefix}{name}"


def _section(node, alias: dict) -> str | None:
  """The section a `config.<section>` expression (or a local name bound to one) denotes."""
  if isinstance(node, ast.Name):
    return alias.get(node.id)
  if isinstance(node, ast.Attribute) and node.attr in CHECKED:
    base = node.value
    if isinstance(base, ast.Name) and (base.id in ("c", "cfg") or base.id.endswith("config")):
      return node.attr
    if isinstance(base, ast.Attribute) and base.attr.endswith("config"):
      return node.attr
  return None


def _reads():
  """(file:line, section, key, has_default) for every read of a checked section's key."""
  for path in CODE:
    tree = ast.parse(path.read_text(), filename=str(path))
    for scope in ast.walk(tree):
      if not isinstance(scope, (ast.Module, ast.FunctionDef)):
        continue
      alias = {}
      for n in ast.walk(scope):
        if isinstance(n, ast.Assign) and len(n.targets) == 1:
          target, value = n.targets[0], n.value
          pairs = zip(target.elts, value.elts) if isinstance(target, ast.Tuple) and \
              isinstance(value, ast.Tuple) else [(target, value)]
          for name, expr in pairs:
            section = _section(expr, {})
            if section and isinstance(name, ast.Name):
              alias[name.id] = section
      for n in ast.walk(scope):
        where = f"{path.relative_to(ROOT)}:{getattr(n, 'lineno', 0)}"
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get" \
            and n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str):
          section = _section(n.func.value, alias)
          if section:
            yield where, section, n.args[0].value, len(n.args) > 1
        elif isinstance(n, ast.Attribute) and n.attr not in VIEWS and not n.attr.startswith("_"):
          section = _section(n.value, alias)
          if section:
            yield where, section, n.attr, False


READS = sorted(set(_reads()))


def test_the_scan_sees_the_reads():
  """The scan below is only as good as what it finds: the trainer's known reads are among them."""
  found = {(s, k) for _, s, k, _ in READS}
  assert {("train", "total_steps"), ("train", "time_limit_minutes"), ("evals", "rover_tasks"),
          ("checkpoint", "keep"), ("optim", "frozen"), ("evals", "mctune_cases"),
          ("rl", "inner_epochs"), ("data", "on_error")} <= found


def _declared(section: str):
  if section == "rl":   # config.rl is declared by the GRPO trainer (a run has one only to do RL)
    from jaxmodels.trainer.grpo import rl_block
    return set(rl_block().keys())
  if section == "data":   # any source's keys (config.data.name picks the source)
    return set(S.DATA_COMMON).union(*S.DATA_SOURCES.values())
  return set(S.SECTIONS[section]) | ({"hf"} if section == "init" else set())


def test_every_key_the_code_reads_is_declared_once():
  undeclared = [f"{w}: config.{s}.{k}" for w, s, k, _ in READS if k not in _declared(s)]
  restated = [f"{w}: config.{s}.get({k!r}, <default>)" for w, s, k, d in READS if d]
  assert not undeclared, "read but not declared in jaxmodels/config_schema.py (config.rl: trainer/grpo.py):\n" \
      + "\n".join(undeclared)
  assert not restated, "a default restated at a call site (the schema holds it):\n" + "\n".join(restated)


def test_every_declared_key_can_be_set_and_typos_are_named():
  from configs import shapes_tiny
  config = shapes_tiny.get_config()
  paths = [*S.TOP, *(f"{s}.{p}" for s, keys in S.SECTIONS.items() for p in _leaf_paths(keys))]
  check_overrides(config, paths)          # each exists in a config file's ConfigDict
  config.evals.rover_tasks = 4            # typed placeholders take their type ...
  config.train.time_limit_minutes = 2.5
  assert (config.evals.rover_tasks, config.train.time_limit_minutes) == (4, 2.5)
  with pytest.raises(TypeError):
    config.evals.rover_tasks = "four"     # ... and refuse another
  with pytest.raises(ConfigError, match=r"--config\.evals\.rover_task: .*did you mean 'rover_tasks'"):
    check_overrides(config, ["evals.rover_task"])
  from configs import shapes_grpo
  from jaxmodels.trainer.grpo import rl_block
  rl_config = shapes_grpo.get_config()
  check_overrides(rl_config, [f"rl.{k}" for k in rl_block().keys()])   # e.g. rl.render_steps


@pytest.mark.parametrize("source", sorted(S.DATA_SOURCES))
def test_every_data_key_of_a_source_can_be_set(source):
  import ml_collections
  config = ml_collections.ConfigDict({"data": S.data_block(source)})
  check_overrides(config, [f"data.{k}" for k in S.data_keys(source)])
  with pytest.raises(ValueError, match=r"config.data for .*no key\(s\) \['gen_lenn'\]"):
    S.data_block(source, gen_lenn=3)


def test_data_sections_follow_their_source():
  """ShapesWorld and real sources keep their own defaults (gen_len 16 / 64); a None value reads as the
  default; the ShapesWorld evaluations read ShapesWorld keys of a run on any source; typos are named."""
  from configs import shapes_tiny
  assert S.data_section({"name": "shapes_world"}).gen_len == 16
  real = S.data_section({"name": "tfds", "gen_len": None, "max_length": 96})
  assert (real.gen_len, real.max_length, real.image_field) == (64, 96, "image") and "und_len" not in real
  both = S.data_section({"name": "tfds"}, also="shapes_world")
  assert (both.gen_len, both.und_len, both.config) == (64, 48, "res32")
  config = shapes_tiny.get_config()
  with pytest.raises(ConfigError, match=r"--config\.data\.edit_fractoin: .*did you mean 'edit_fraction'"):
    check_overrides(config, ["data.edit_fractoin"])
  check_overrides(config, ["data.und_colorbench", "data.tokenizer", "data.image_aspect"])


def test_complete_fills_what_a_config_lacks_and_keeps_what_it_sets():
  import ml_collections
  config = ml_collections.ConfigDict({"model": {}, "train": {"total_steps": 7}, "evals": None})
  S.complete(config)
  assert config.train.total_steps == 7 and config.train.gen_every == 1
  assert config.evals.batch_size == 64 and config.evals.rover_tasks is None
  assert config.init.hf.llm is None and config.checkpoint.keep == 3 and config.seed == 0
  assert config.data.name == "shapes_world" and config.data.gen_len == 16
  config = S.complete(ml_collections.ConfigDict({"data": {"name": "mctune", "batch_size": 4}}))
  assert (config.data.batch_size, config.data.max_length, config.data.on_error) == (4, 512, "raise")


def test_a_stored_config_from_before_a_key_existed_reads_its_default(tmp_path):
  from jaxmodels.run_dir import stored_config
  old = S.base_config().to_dict()
  del old["evals"]["rover_tasks"], old["train"]["max_nonfinite"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  config = stored_config(str(tmp_path), 0)
  assert config.evals.rover_tasks is None and config.train.max_nonfinite == 1


def test_docs_config_reference_is_current():
  assert (ROOT / "docs" / "CONFIG.md").read_text() == S.markdown(), \
      "regenerate: python -m jaxmodels.config_schema > docs/CONFIG.md"


def test_one_execution_block_sets_every_tower():
  """config.model.execution (declared unset in the paper configs) switches remat / dtype of every tower
  of a full-size BLIP3-o at once; unset settings leave the towers' own; bad values are named."""
  from configs import blip3o_8b
  from jaxmodels.unified.build import unified_config
  config = blip3o_8b.get_config()
  own = unified_config(config.model)
  check_overrides(config, ["model.execution.remat", "model.execution.param_dtype"])
  config.model.execution.remat = "dots"
  config.model.execution.param_dtype = "bfloat16"
  u = unified_config(config.model)
  towers = (u.llm, u.und_encoder, u.gen_encoder, u.dit)
  assert all(t.param_dtype == "bfloat16" for t in towers) and own.llm.param_dtype == "float32"
  assert [getattr(t, "remat", "dots") for t in towers] == ["dots"] * 4
  assert (u.llm.dtype, u.llm.scan_layers) == (own.llm.dtype, own.llm.scan_layers)   # unset: kept
  config.model.execution.remat = "fast"
  with pytest.raises(ConfigError, match=r"config\.model\.execution\.remat='fast': expected one of"):
    unified_config(config.model)


def test_execution_settings_stay_out_of_exported_configs():
  """A tower's config.json holds what it computes, never how it runs (scan_layers included)."""
  from jaxmodels.flow.sana import SanaConfig
  from jaxmodels.hf import sana_family
  from jaxmodels.layers.execution import EXECUTION_FIELDS
  exported = sana_family.config_to_hf(SanaConfig(scan_layers=True, remat="full"))
  assert not set(EXECUTION_FIELDS) & set(exported)


def test_the_execution_block_reaches_florence_vl():
  """Florence-VL's towers (the LLM, Florence-2's encoder and its DaViT) take config.model.execution too."""
  from configs import florence_vl_3b
  from jaxmodels.unified.florence_vl import florence_vl_config
  config = florence_vl_3b.get_config("tiny")
  own = florence_vl_config(config.model)
  check_overrides(config, ["model.execution.remat", "model.execution.dtype"])
  config.model.execution.update(remat="full", dtype="bfloat16")
  f = florence_vl_config(config.model)
  towers = (f.llm, f.und_encoder.florence, f.und_encoder.florence.vision)
  assert [t.remat for t in towers] == ["full"] * 3 and own.llm.remat == "none"
  assert f.und_encoder.florence.vision.dtype == "bfloat16" and own.und_encoder.florence.vision.dtype == "float32"
