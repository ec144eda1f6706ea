"""ROVER-style scoring: score parsing order, missing vs zero, (s−1)×25 and pooled AVG, the
resumable jsonl, data/rubric loading, and the HTTP judge against a fake server on 127.0.0.1."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from jaxmodels.evals import EvalInputError
from jaxmodels.evals import judges as J
from jaxmodels.evals import rover as R
from judge_server import SECRET, FakeServer


def png_bytes(value=0, size=8):
  buf = io.BytesIO()
  Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


# --------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("reply, expected", [
    ('{"image_quality_score": 4, "reasoning": "sharp"}', (4, "sharp")),
    ('```json\n{"image_quality_score": "5", "reasoning": "r"}\n```', (5, "r")),
    ('{{"image_quality_score": 2, "reasoning": "blurry"}}', (2, "blurry")),
    ('Here you go: {"image_quality_score": 3, "reasoning": "ok"} thanks', (3, "ok")),
    ("image_quality_score: 4\nreasoning: fine detail", (4, "fine detail")),
    ("The image quality score is 2.", (2, None)),
    ("I would rate it 3/5 overall.", (3, None)),
    ("Overall 4 out of 5.", (4, None)),
    ("Score: 1", (1, None)),
    ('{"image_quality_score": 0, "reasoning": "error"}', (None, None)),
    ('{"image_quality_score": 7}', (None, None)),
    ('{"image_quality_score": 3.5}', (None, None)),
    ("no number here", (None, None)), ("", (None, None)), (None, (None, None)),
])
def test_parse_score_order_and_range(reply, expected):
  assert J.parse_score(reply, "image_quality_score") == expected


def test_parse_score_prefers_json_over_regex():
  # The text mentions "2/5" but the JSON object carries the score.
  reply = 'Compared with a 2/5 baseline: {"reasoning_visual_score": 4, "reasoning": "x"}'
  assert J.parse_score(reply, "reasoning_visual_score") == (4, "x")


def test_task_ids():
  assert R.parse_task_id("science_temporal_1") == ("science", "temporal")
  assert R.parse_task_id("common_sense_causal_12") == ("common_sense", "causal")
  assert R.parse_task_id("logic_math_3") == ("logic", "mathematical")
  assert R.parse_task_id("weird") == (None, None)


# --------------------------------------------------------------------------- summary

def rec(key, **scores):
  return {"key": key, "result": {f"{m}_score": v for m, v in scores.items()}}


def test_scores_mapped_and_avg_pooled():
  records = [rec("science_temporal_1", reasoning_process=5, reasoning_visual=5),
             rec("science_temporal_2", reasoning_process=1, reasoning_visual=None)]
  s = R.summarize(records, metrics=("reasoning_process", "reasoning_visual"))
  assert s["overall"]["RP"] == 50.0 and s["overall"]["RV"] == 100.0
  # Pooled over the three present scores (100, 100, 0), not the mean of the means (75).
  assert s["overall"]["AVG"] == pytest.approx(200 / 3)
  assert s["counts"] == {"RP": 2, "RV": 1} and s["missing"] == {"RP": 0, "RV": 1}
  assert s["dimensions"]["science"]["AVG"] == pytest.approx(200 / 3)


def test_missing_is_not_zero():
  records = [rec("science_spatial_1", image_quality=5), rec("science_spatial_2", image_quality=0),
             rec("science_spatial_3", image_quality=None), rec("science_spatial_4")]
  s = R.summarize(records, metrics=("image_quality",))
  assert s["overall"] == {"IQ": 100.0, "AVG": 100.0} and s["missing"]["IQ"] == 3
  official = R.summarize(records, metrics=("image_quality",), zero_as_missing=False)
  assert official["overall"]["IQ"] == pytest.approx((100 - 25) / 2)  # the official −25 bug


def test_breakdowns_leaderboard_and_merge():
  records = [rec("science_temporal_1", reasoning_visual=5, image_quality=5, visual_consistency=3),
             rec("logic_math_1", reasoning_visual=1, image_quality=3, visual_consistency=None),
             rec("logic_math_1", visual_consistency=5)]  # a later line fills a missing metric
  s = R.summarize(records)
  assert s["task_count"] == 2
  assert list(s["dimensions"]) == ["science", "logic"]
  assert s["reasoning_types"]["mathematical"]["RV"] == 0.0
  assert s["leaderboard"]["by_dimension"] == {"science": pytest.approx(250 / 3),
                                              "logic": pytest.approx(50.0)}
  assert s["leaderboard"]["value"] == pytest.approx((250 / 3 + 50) / 2)
  assert R.summarize(records, metrics=("image_quality",))["leaderboard"]["value"] is None


# --------------------------------------------------------------------------- data and rubrics

RUBRICS_PY = '''
prompt_reasoning_process_temporal = """RP {prompt} | {dimension} | {keywords} | {think_output}
{{"reasoning_process_score": X}}"""
prompt_reasoning_visual_temporal = "RV {prompt} | {target_description}"
prompt_reasoning_process_logical = "RP-logic {prompt} {think_output}"
prompt_reasoning_visual_logical = "RV-logic {prompt}"
prompt_reasoning_alignment = "RA {prompt} " + "{think_output}"
prompt_visual_consistency = "VC {prompt}"
prompt_image_quality = """IQ {"image_quality_score": X}"""
prompt_interleaved_reasoning_jigsaw = "IR {prompt} {answer}"
prompt_reasoning_alignment_jigsaw = "TA {model_answer} vs {answer}"
NOT_A_STRING = 3
'''


@pytest.fixture
def rubrics(tmp_path):
  path = tmp_path / "prompts.py"
  path.write_text(RUBRICS_PY)
  return R.load_rubrics(path)


def test_load_rubrics_and_names(rubrics):
  assert rubrics["prompt_reasoning_alignment"] == "RA {prompt} {think_output}"
  assert "NOT_A_STRING" not in rubrics
  assert R.rubric_name("IG", "reasoning_visual", "abstract") == "prompt_reasoning_visual_logical"
  assert R.rubric_name("IG", "image_quality", "spatial") == "prompt_image_quality"
  assert R.rubric_name("TG", "interleaved_reasoning", "multi-view") == \
      "prompt_interleaved_reasoning_multi_view"
  assert R.rubric_name("TG", "reasoning_alignment", "embodied") == \
      "prompt_reasoning_alignment_physical"


def test_load_rover_parquet(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  meta = {"info": {"features": {"dimension": {"_type": "ClassLabel",
                                              "names": ["science", "culture"]}}}}
  img = {"bytes": png_bytes(10), "path": None}
  table = pa.table({"id": ["culture_spatial_1"], "dimension": [1], "reasoning_type": ["spatial"],
                    "prompt": ["rotate"], "target_description": ["rotated"],
                    "keywords": ["geometry"], "image": [img], "target_image": [None]})
  table = table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
  (tmp_path / "ROVER-IG").mkdir()
  pq.write_table(table, tmp_path / "ROVER-IG" / "train-00000.parquet")
  tasks = R.load_rover(tmp_path, "IG")
  assert tasks[0]["dimension"] == "culture" and tasks[0]["image"] == img["bytes"]
  assert tasks[0]["target_image"] is None
  with pytest.raises(EvalInputError, match="no ROVER-TG parquet"):
    R.load_rover(tmp_path / "ROVER-TG", "TG")
  pq.write_table(table.drop(["keywords"]), tmp_path / "bad.parquet")
  with pytest.raises(EvalInputError, match=r"bad.parquet: missing column\(s\) keywords"):
    R.load_rover(tmp_path / "bad.parquet", "IG")


# --------------------------------------------------------------------------- driver, fake judge

class FakeJudge:
  def __init__(self, scores=None):
    self.calls = []
    self.scores = scores or {}

  def judge(self, prompt, images, score_key):
    self.calls.append((score_key, prompt, list(images)))
    return J.JudgeReply(self.scores.get(score_key, 4), f"fine ({score_key})")

  def describe(self):
    return {"type": "fake"}


def ig_tasks(n=3, target=False):
  return [{"id": f"science_temporal_{i}", "dimension": "science", "reasoning_type": "temporal",
           "prompt": f"grow {i}", "target_description": "taller", "keywords": "growth",
           "image": png_bytes(1), "target_image": png_bytes(2) if target else None}
          for i in range(n)]


def test_outputs_judged_in_rubric_order_and_resumed(tmp_path, rubrics):
  gen, out = tmp_path / "gen", tmp_path / "scores"
  tasks = ig_tasks(3, target=True)
  for t in tasks:
    R.write_output(gen, t["id"], np.full((8, 8, 3), 3, np.uint8), "it grows" if t["id"][-1] != "2"
                   else None)
  judge = FakeJudge()
  s = R.evaluate(tasks, gen, judge, rubrics, out, max_tasks=2, progress=False)
  assert len(judge.calls) == 10 and s["task_count"] == 2 and s["overall"]["AVG"] == 75.0
  by_key = {k: (p, imgs) for k, p, imgs in judge.calls[:5]}
  generated = R.output_paths(gen, tasks[0]["id"])[0].read_bytes()
  assert by_key["reasoning_visual_score"][1] == [tasks[0]["image"], generated,
                                                 tasks[0]["target_image"]]
  assert by_key["reasoning_process_score"][1] == [tasks[0]["image"]]
  assert by_key["image_quality_score"] == ('IQ {"image_quality_score": X}', [generated])
  assert by_key["reasoning_process_score"][0].startswith("RP grow 0 | science | growth | it grows")
  # Resume: only the third task is judged; its missing think text gets the official placeholder.
  judge2 = FakeJudge()
  s = R.evaluate(tasks, gen, judge2, rubrics, out, progress=False)
  assert {p for _, p, _ in judge2.calls if p.startswith("RA")} == \
      {"RA grow 2 " + R.NO_THINK_TEXT}
  assert len(judge2.calls) == 5 and s["task_count"] == 3 and s["newly_judged"] == 1
  lines = (out / "rover_metrics.jsonl").read_text().splitlines()
  assert len(lines) == 3 and json.loads(lines[0])["result"]["reasoning_process_score"] == 4
  assert json.loads((out / "rover_summary.json").read_text())["summary"]["judge"] == \
      {"type": "fake"}
  assert len(FakeJudge().calls) == 0
  judge3 = FakeJudge()
  R.evaluate(tasks, gen, judge3, rubrics, out, progress=False)
  assert judge3.calls == []


def test_failures_are_missing_and_redo(tmp_path, rubrics):
  gen, out = tmp_path / "gen", tmp_path / "scores"
  tasks = ig_tasks(2)
  for t in tasks:
    R.write_output(gen, t["id"], np.zeros((8, 8, 3), np.uint8), "think")

  class Flaky(FakeJudge):
    def judge(self, prompt, images, score_key):
      if score_key == "image_quality_score":
        raise RuntimeError("boom")
      return super().judge(prompt, images, score_key)

  s = R.evaluate(tasks, gen, FakeJudge({"visual_consistency_score": None}), rubrics, out,
                 metrics=("visual_consistency", "reasoning_visual"), progress=False)
  assert s["missing"]["VC"] == 2 and "VC" not in s["overall"] and s["overall"]["RV"] == 75.0
  s = R.evaluate(tasks, gen, Flaky(), rubrics, out, progress=False, redo_missing=True)
  row = json.loads((out / "rover_metrics.jsonl").read_text().splitlines()[-1])["result"]
  assert row["image_quality_score"] is None and row["image_quality_reasoning"].startswith("error")
  assert s["missing"]["IQ"] == 2 and s["overall"]["VC"] == 75.0


def test_incomplete_outputs_refused(tmp_path, rubrics):
  tasks = ig_tasks(2)
  R.write_output(tmp_path / "gen", tasks[0]["id"], png_bytes(5))
  with pytest.raises(EvalInputError, match="1 of 2 tasks have no gen_"):
    R.evaluate(tasks, tmp_path / "gen", FakeJudge(), rubrics, tmp_path / "o", progress=False)
  s = R.evaluate(tasks, tmp_path / "gen", FakeJudge(), rubrics, tmp_path / "o",
                 allow_incomplete=True, progress=False)
  assert s["missing_outputs"] == ["science_temporal_1"] and s["task_count"] == 1


def test_tg_jigsaw_images(tmp_path, rubrics):
  task = {"id": "jigsaw_1", "problem_type": "jigsaw", "prompt": "fill", "answer": "B",
          "image": png_bytes(1), "reasoning_image": png_bytes(2), "image2": None}
  reqs = R.judge_requests(task, "TG", b"GEN", "Final Answer: B", rubrics,
                          R.TG_METRICS)
  assert reqs[0] == ("interleaved_reasoning", "IR fill B", [task["reasoning_image"], b"GEN"])
  assert reqs[1] == ("reasoning_alignment", "TA Final Answer: B vs B", [task["image"], b"GEN"])
  no_gt = R.judge_requests(dict(task, reasoning_image=None), "TG", b"GEN", None, rubrics,
                           R.TG_METRICS)
  assert no_gt[0][2] is None  # interleaved reasoning needs the GT image: missing, not 0
  assert no_gt[1][1] == f"TA {R.NO_ANSWER_TEXT} vs B"


# --------------------------------------------------------------------------- HTTP judge

@pytest.fixture(autouse=True)
def no_proxy_for_localhost(monkeypatch):
  monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def make_judge(url, sleeps, **kw):
  return J.OpenAIJudge(url, "judge-model", api_key_env="ROVER_TEST_KEY", backoff_scale=0.001,
                       timeout=5, sleep=sleeps.append, **kw)


def test_http_judge_retries_then_parses(monkeypatch):
  monkeypatch.setenv("ROVER_TEST_KEY", SECRET)
  script = [(500, None), (200, "I like it."),
            (200, '{"image_quality_score": 4, "reasoning": "ok"}')]
  sleeps = []
  with FakeServer(script) as server:
    reply = make_judge(server.url, sleeps).judge("IQ rubric", [png_bytes(1), b"\xff\xd8jpeg"],
                                                "image_quality_score")
  assert (reply.score, reply.reasoning) == (4, "ok")
  assert len(server.requests) == 3 and sleeps == [0.001]  # one backoff, after the HTTP 500
  first = server.requests[0]
  assert first["path"] == "/v1/chat/completions" and first["auth"] == f"Bearer {SECRET}"
  body = first["body"]
  assert body["model"] == "judge-model" and body["temperature"] == 0.0
  assert body["max_tokens"] == 3000
  content = body["messages"][0]["content"]
  assert [c["type"] for c in content] == ["text", "image_url", "image_url"]
  assert content[0]["text"] == "IQ rubric"
  assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
  assert content[2]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_http_judge_failures_are_missing(monkeypatch):
  monkeypatch.setenv("ROVER_TEST_KEY", SECRET)
  sleeps = []
  with FakeServer([(500, None)] * 3) as server:
    reply = make_judge(server.url, sleeps, api_attempts=3).judge("r", [], "image_quality_score")
  assert reply.score is None and "HTTP 500" in reply.error and len(server.requests) == 3
  assert sleeps == [0.001, 0.002]
  with FakeServer([(401, None)]) as server:
    reply = make_judge(server.url, sleeps).judge("r", [], "image_quality_score")
  assert reply.score is None and "HTTP 401" in reply.error and len(server.requests) == 1
  assert SECRET not in reply.error
  with FakeServer([(200, "no score")] * 2) as server:
    reply = make_judge(server.url, sleeps, parse_attempts=2).judge("r", [], "image_quality_score")
  assert reply.score is None and len(server.requests) == 2 and "no valid" in reply.error
  monkeypatch.delenv("ROVER_TEST_KEY")
  with pytest.raises(EvalInputError, match="ROVER_TEST_KEY"):
    make_judge("http://127.0.0.1:9/v1", sleeps)


def test_http_judge_end_to_end_never_writes_key(monkeypatch, tmp_path, rubrics):
  monkeypatch.setenv("ROVER_TEST_KEY", SECRET)
  tasks = ig_tasks(1)
  R.write_output(tmp_path / "gen", tasks[0]["id"], png_bytes(9), "reasoning text")
  leak = json.dumps({"reasoning_visual_score": 5, "reasoning": f"echo {SECRET}"})
  script = [(500, None), (200, leak), (429, None), (200, "visual_consistency_score: 2")]
  sleeps = []
  with FakeServer(script) as server:
    judge = make_judge(server.url, sleeps)
    s = R.evaluate(tasks, tmp_path / "gen", judge, rubrics, tmp_path / "out",
                   metrics=("reasoning_visual", "visual_consistency"), progress=False)
  assert s["overall"] == {"RV": 100.0, "VC": 25.0, "AVG": 62.5}
  assert len(server.requests) == 4
  assert SECRET not in repr(judge) and SECRET not in json.dumps(judge.describe())
  written = list((tmp_path / "out").iterdir())
  assert {p.name for p in written} == {"rover_metrics.jsonl", "rover_summary.json"}
  for p in written:
    assert SECRET not in p.read_text()
  assert "echo ***" in (tmp_path / "out" / "rover_metrics.jsonl").read_text()
