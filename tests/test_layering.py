"""Imports run downwards only: each layer of the tree imports nothing from a layer above it.

Layers, bottom to top (docs/ARCHITECTURE.md):
  0  jaxmodels.errors                 the exception leaf
  1  jaxmodels.shapes_world           the embedded world (renderer, scenes, builder, tasks, geometry)
  2  model core                       layers, towers, flow, unified composition, hf import/export, ...
  3  input_pipeline                   data: sources, tokenizers, Grain pipelines, ShapesWorld tasks
  4  trainer / evals / serving / rl   what runs a model on data
  5  configs, scripts, tools          the entry points
Every import is checked, those inside functions too (a lazy import is still a dependency).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UPPER = ("jaxmodels.trainer", "jaxmodels.evals", "jaxmodels.serving", "jaxmodels.rl")
ENTRY = ("configs", "train", "evaluate", "sample", "serve", "tools")


def _layer(module: str) -> int:
  if module == "jaxmodels.errors":
    return 0
  if module.startswith("jaxmodels.shapes_world"):
    return 1
  if module.startswith(UPPER):
    return 4
  if module.split(".")[0] == "input_pipeline":
    return 3
  if module.split(".")[0] in ENTRY:
    return 5
  if module.split(".")[0] == "jaxmodels":
    return 2
  return -1   # not ours


def _module_name(path: Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _imports(path: Path):
  """(line, imported module) for every import of ours in the file; `from pkg import mod` names the
  submodule when it is one."""
  tree = ast.parse(path.read_text(), filename=str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() or \
            (ROOT / Path(*sub.split("."))).is_dir()
        yield node.lineno, sub if is_module else node.module


def _sources():
  for top in ("jaxmodels", "input_pipeline"):
    yield from sorted((ROOT / top).rglob("*.py"))


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_downwards(path):
  name = _module_name(path)
  own = _layer(name)
  bad = []
  for line, module in _imports(path):
    layer = _layer(module)
    if layer < 0:
      continue
    # Within a layer anything goes, except that the bottom two import only themselves and below.
    if layer > own or (own <= 1 and layer == own and module.split(".")[:2] != name.split(".")[:2]):
      bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} (layer {layer} > {own})")
  assert not bad, "\n".join(bad)


def test_the_layers_are_what_the_docs_say():
  assert _layer("jaxmodels.shapes_world.render") == 1
  assert _layer("jaxmodels.unified.model_io") == 2
  assert _layer("input_pipeline.datasets") == 3
  assert _layer("jaxmodels.trainer.setup") == 4
  assert _layer("numpy") == -1
