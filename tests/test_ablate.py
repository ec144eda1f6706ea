"""tools/ablate.py: summary arithmetic, table and plot, resume, stages, and that every ablation arm builds.

No training here (a mocked train function); the real smoke run is
`python tools/ablate.py --ablation=gen_target --runlocal --seeds=1 --workdir=/tmp/ablate_smoke`.
"""
import json
import math
import os

import pytest
from PIL import Image

from jaxmodels.errors import ConfigError, JaxModelsError
from tools import ablate


def _row(arm, seed, **metrics):
  return {"arm": arm, "seed": seed, "budget": "b", "metrics": metrics}


ROWS = [_row("a", 0, **{"qa/overall": 0.1, "s/img": 2.0}), _row("a", 1, **{"qa/overall": 0.2, "s/img": 2.0}),
        _row("a", 2, **{"qa/overall": 0.3, "s/img": 2.0}),
        _row("b", 0, **{"qa/overall": 0.5, "s/img": 1.0, "qa/color": 1.0}),
        _row("b", 1, **{"qa/overall": 0.7, "s/img": 1.0})]


def test_summary_means_stds_and_differences():
  s = ablate.summarize("x", ("a", "b"), ("qa/*", "s/img"), ROWS, lower_is_better=("s/img",), budget="b")
  assert s["metrics"] == ["qa/overall", "qa/color", "s/img"]
  a, b = s["per_arm"]["a"]["qa/overall"], s["per_arm"]["b"]["qa/overall"]
  assert (a["n"], b["n"]) == (3, 2)
  assert a["mean"] == pytest.approx(0.2) and a["std"] == pytest.approx(0.1)        # sample std (ddof 1)
  assert b["mean"] == pytest.approx(0.6) and b["std"] == pytest.approx(math.sqrt(0.02))
  assert s["per_arm"]["b"]["qa/color"] == {"mean": 1.0, "std": 0.0, "n": 1}
  assert "qa/color" not in s["per_arm"]["a"]
  diffs = {d["metric"]: d for d in s["differences"]}
  d = diffs["qa/overall"]
  assert d["diff"] == pytest.approx(0.4)
  assert d["se"] == pytest.approx(math.sqrt(0.01 / 3 + 0.02 / 2))
  assert d["z"] == pytest.approx(0.4 / d["se"])
  assert (d["direction"], d["better"], d["verdict"]) == ("b > a", "b", "clear")
  t = diffs["s/img"]      # lower is better: b's smaller time wins; no spread -> z undefined
  assert (t["diff"], t["se"], t["z"], t["direction"], t["better"]) == (-1.0, 0.0, None, "b < a", "b")
  assert t["verdict"] == "within noise"
  assert "qa/color" not in diffs    # the reference arm has no value
  single = ablate.summarize("x", ("a", "b"), ("qa/overall",), [ROWS[0], ROWS[3]])
  assert single["differences"][0]["verdict"] == "single seed"
  assert single["per_arm"]["a"]["qa/overall"]["std"] == 0.0


def test_table_and_plot(tmp_path):
  s = ablate.summarize("x", ("a", "b", "c"), ("qa/*", "s/img"), ROWS, lower_is_better=("s/img",), budget="b")
  md = ablate.table_markdown(s, claim="A claim.", command="python tools/ablate.py --ablation=x")
  assert "| qa/overall | 0.200 ± 0.100 (n=3) | 0.600 ± 0.141 (n=2) | — |" in md
  assert "| qa/overall | b − a | 0.400 | 0.115 | b > a | b | clear |" in md
  assert "A claim." in md and "`python tools/ablate.py --ablation=x`" in md
  ablate.plot_png(s, str(tmp_path / "plot.png"))
  with Image.open(tmp_path / "plot.png") as img:
    assert img.size == (3 * 240, 50 + 220 + 20) and img.getextrema() != ((255, 255),) * 3
  ablate.plot_png(ablate.summarize("x", ("a",), ("m",), []), str(tmp_path / "empty.png"))   # no results


def test_flatten_fmt_and_overrides():
  assert ablate.flatten({"qa": {"overall": 0.5, "bad": None}, "step": 3, "note": "x",
                         "g": {"t": {"u": 1}}}) == {"qa/overall": 0.5, "step": 3.0, "g/t/u": 1.0}
  assert [ablate.fmt(x) for x in (None, 0.5, 12.345, 123.4, 0.0001)] == ["—", "0.500", "12.35", "123.4",
                                                                         "1.00e-04"]
  m = ablate.load_ablation("gen_target")
  c = ablate.arm_config(m, "pixels", 2, steps=40)
  assert (c.seed, c.train.total_steps, c.train.time_limit_minutes, c.model.gen_target) == (2, 40, None, "pixels")
  c = ablate.arm_config(m, "ae", 0, minutes=1.5)
  assert (c.train.time_limit_minutes, c.model.gen_target) == (1.5, "autoencoder")
  assert ablate.budget_name(minutes=1.5, steps=None, runlocal=False) == "1.5min"
  with pytest.raises(ConfigError, match="unknown arm"):
    m.get_config("latents")
  with pytest.raises(ConfigError, match="expected one of"):
    ablate.load_ablation("nope")


def test_every_arm_builds_its_model_config():
  from jaxmodels.unified.build import unified_config
  from jaxmodels.unified.florence_vl import florence_vl_config
  for name in ablate.ABLATIONS:
    m = ablate.load_ablation(name)
    for arm in m.ARMS:
      for stage in ablate.stages_of(m, arm):
        for runlocal in (False, True):
          c = ablate.arm_config(m, arm, 1, stage=stage, minutes=2.0, runlocal=runlocal,
                                init_from="/s1" if stage == "stage2" else None)
          assert c.seed == 1 and c.train.time_limit_minutes == 2.0
          if c.model.get("type") == "florence_vl":
            assert florence_vl_config(c.model, require_prompt_ids=True).und_encoder.mode == arm
            continue
          u = unified_config(c.model)
          if name == "pisces_encoders":
            assert u.gen_projector == (arm == "decoupled") and c.data.edit_fraction == 0.25
            if u.gen_projector:   # as many generation-side image tokens as understanding tokens
              assert (u.gen_encoder.grid_size // u.gen_pool) == (u.und_encoder.grid_size // u.und_pool)
          if name == "latte_groups":
            assert u.dit.num_groups == int(arm[1:]) and u.dit.num_layers == u.llm.num_layers
          if stage == "stage1":
            assert u.gen_weight == 0.0 and not c.optim.frozen
          if stage == "stage2":
            assert u.und_weight == 0.0 and c.init.checkpoint == "/s1" and "llm/.*" in c.optim.frozen


def _fake_train(calls):
  def train_fn(config, workdir):
    calls.append((config, workdir))
    bonus = 0.5 if config.model.gen_target == "autoencoder" else 0.0
    scores = {"geneval": {"overall": 0.1 * config.seed + bonus, "single_object": 1.0},
              "qa": {"overall": 0.3}}
    with open(os.path.join(workdir, "scores.json"), "w") as f:
      json.dump({"step": config.train.total_steps, "train_minutes": 0.1, **scores}, f)
    return scores
  return train_fn


def test_resume_skips_finished_runs(tmp_path):
  calls, logs = [], []
  kw = dict(runlocal=True, train_fn=_fake_train(calls), log=logs.append)
  s = ablate.run_ablation("gen_target", str(tmp_path), seeds=2, **kw)
  assert [(c.model.gen_target, c.seed) for c, _ in calls] == [
      ("autoencoder", 0), ("pixels", 0), ("autoencoder", 1), ("pixels", 1)]
  assert calls[0][1] == str(tmp_path / "gen_target" / "ae" / "seed0")
  assert s["per_arm"]["ae"]["geneval/overall"]["mean"] == pytest.approx(0.55)
  assert s["differences"][0]["diff"] == pytest.approx(-0.5)
  out = tmp_path / "gen_target"
  assert len(ablate.read_results(str(out / "results.jsonl"))) == 4
  assert (out / "table.md").exists() and (out / "plot.png").exists()
  assert any("ETA" in line for line in logs)
  ablate.run_ablation("gen_target", str(tmp_path), seeds=2, **kw)
  assert len(calls) == 4                                    # nothing left to run
  with open(out / "results.jsonl", "a") as f:
    f.write('{"torn')                                        # a killed writer's partial line
  ablate.run_ablation("gen_target", str(tmp_path), seeds=3, **kw)
  assert [(c.model.gen_target, c.seed) for c, _ in calls[4:]] == [("autoencoder", 2), ("pixels", 2)]
  rows = ablate.read_results(str(out / "results.jsonl"))
  assert len(rows) == 6 and {r["budget"] for r in rows} == {"runlocal"}
  with pytest.raises(ConfigError, match="another budget"):   # same run dirs, other budget
    ablate.run_ablation("gen_target", str(tmp_path), seeds=1, steps=5, **kw)


def test_stages_split_the_budget_and_chain(tmp_path):
  calls = []
  fake = _fake_train(calls)

  def flaky(config, workdir):
    if workdir.endswith("stage2") and not flaky.failed:
      flaky.failed = True
      raise RuntimeError("killed")
    return fake(config, workdir)
  flaky.failed = False
  kw = dict(seeds=1, minutes=4.0, train_fn=flaky, log=lambda s: None)
  with pytest.raises(RuntimeError):
    ablate.run_ablation("sequential", str(tmp_path), **kw)
  s = ablate.run_ablation("sequential", str(tmp_path), **kw)
  seq = tmp_path / "sequential" / "sequential" / "seed0"
  names = [(c.model.gen_weight, c.model.und_weight, c.train.time_limit_minutes, w) for c, w in calls]
  assert names == [(1.0, 1.0, 4.0, str(tmp_path / "sequential" / "joint" / "seed0")),
                   (0.0, 1.0, 2.0, str(seq / "stage1")),
                   (1.0, 0.0, 2.0, str(seq / "stage2"))]          # stage 1 not trained again
  assert calls[2][0].init.checkpoint == str(seq / "stage1")
  assert s["per_arm"]["sequential"]["stage1/qa/overall"]["mean"] == 0.3
  assert "stage1/qa/overall" not in s["per_arm"]["joint"]


def test_a_stopped_run_is_not_recorded(tmp_path):
  def stopped(config, workdir):
    return {"stopped_by": "SIGTERM", "step": 2}
  with pytest.raises(JaxModelsError, match="stopped by SIGTERM"):
    ablate.run_ablation("gen_target", str(tmp_path), seeds=1, runlocal=True, train_fn=stopped,
                        log=lambda s: None)
  assert ablate.read_results(str(tmp_path / "gen_target" / "results.jsonl")) == []
