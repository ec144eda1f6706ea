"""Real-world data through the trainer: LLaVA JSON + image folder -> rows -> Florence-VL `:tiny` steps
(train.py), the HF-tokenizer chat path, captions from WebDataset / ArrayRecord, the corrupt-record policy."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import florence_vl_3b
from input_pipeline import pipeline
from input_pipeline.datasets import RealDataPreprocess, make_train_data, place_image
from input_pipeline.sources import DataError
from jaxmodels.errors import ConfigError
from jaxmodels.unified.model_io import model_io

N_IMG = 4       # florence_vl:tiny: 64 px / 32 = 2×2 visual tokens
IMG_ID = 511    # florence_vl:tiny's image_token_id (LLM vocab 512 − 1)


def _write_llava(tmp_path, corrupt=True):
  rs = np.random.RandomState(0)
  (tmp_path / "imgs").mkdir()
  for i, (h, w) in enumerate([(40, 50), (50, 30), (64, 64)]):
    Image.fromarray((rs.rand(h, w, 3) * 255).astype(np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
  (tmp_path / "imgs" / "bad.png").write_bytes(b"not a png")
  turn = lambda who, text: {"from": who, "value": text}  # noqa: E731
  records = [
      {"id": "a", "image": "imgs/0.png", "conversations": [turn("human", "<image>\nWhat colour is it?"),
                                                           turn("gpt", "It is red.")]},
      {"id": "b", "image": "imgs/1.png", "conversations": [turn("human", "Describe it."),
                                                           turn("gpt", "A noisy square."),
                                                           turn("human", "More?"), turn("gpt", "No.")]},
      {"id": "c", "conversations": [turn("human", "Say hi."), turn("gpt", "hi")]},
      {"id": "e", "image": "imgs/2.png", "conversations": [turn("human", "<image>\nHow many?"),
                                                           turn("gpt", "Three.")]},
  ]
  if corrupt:
    records.insert(3, {"id": "d", "image": "imgs/bad.png",
                       "conversations": [turn("human", "<image>\nx"), turn("gpt", "y")]})
  path = tmp_path / "data.json"
  path.write_text(json.dumps(records))
  return str(path)


def _config(json_path, batch_size=8, **data):
  c = florence_vl_3b.get_config("tiny,data=llava_json")
  c.data.source.json_path = json_path
  c.data.batch_size = batch_size
  c.data.update(data)
  return c


def _rows(data, n):
  """The first n distinct rows (by their id sequence) of the iterator."""
  out = {}
  while len(out) < n:
    batch = next(data.iterator)
    for r in range(batch["und_ids"].shape[0]):
      out.setdefault(tuple(batch["und_ids"][r]), {k: v[r] for k, v in batch.items()})
  return list(out.values())


def test_llava_rows_for_florence_vl(tmp_path):
  config = _config(_write_llava(tmp_path, corrupt=False), batch_size=4)
  data = make_train_data(config, str(tmp_path / "work"), io=model_io(config.model))
  assert (tmp_path / "work" / "tokenizer.json").is_file()        # built-in words, kept for resume
  batch = next(data.iterator)
  assert batch["und_image"].shape == (4, 64, 64, 3) and batch["und_image"].dtype == np.float32
  assert batch["und_ids"].shape == batch["und_mask"].shape == batch["und_loss_mask"].shape == (4, 64)
  tok = data.tokenizer
  texts = {}
  for row in _rows(data, 4):
    ids = row["und_ids"][row["und_mask"] > 0]
    n_img = int((ids == IMG_ID).sum())
    words = tok.decode([i for i in ids if i != IMG_ID], skip_special_tokens=True)
    texts[words] = (n_img, tok.decode(row["und_ids"][row["und_loss_mask"] > 0]))
    assert np.abs(row["und_image"]).max() <= 1.0
    if n_img == 0:                                   # text-only record: blank image
      assert not row["und_image"].any()
  assert texts["what colour is it? it is red."] == (N_IMG, "it is red. <eos>")
  assert texts["describe it. a noisy square. more? no."] == (N_IMG, "a noisy square. <eos> no. <eos>")
  assert texts["say hi. hi"] == (0, "hi <eos>")


def test_corrupt_record_policy(tmp_path):
  config = _config(_write_llava(tmp_path), batch_size=5)
  with pipeline.corrupt_record_policy("skip"):
    data = make_train_data(config, str(tmp_path / "skip"), io=model_io(config.model))
  before = pipeline.skipped_count()
  batch = next(data.iterator)                       # one epoch: the bad record is replaced
  assert batch["und_ids"].shape == (5, 64) and pipeline.skipped_count() > before
  with pipeline.corrupt_record_policy("raise"):
    data = make_train_data(config, str(tmp_path / "raise"), io=model_io(config.model))
  with pytest.raises(DataError, match="bad.png"):
    next(data.iterator)


def test_config_errors(tmp_path):
  config = _config(None)
  with pytest.raises(ConfigError, match="config.data.source.json_path is not set"):
    make_train_data(config, str(tmp_path), io=model_io(config.model))
  config = _config(_write_llava(tmp_path), tokenizer=str(tmp_path / "nope"))
  with pytest.raises(ConfigError, match="config.data.tokenizer="):
    make_train_data(config, str(tmp_path), io=model_io(config.model))
  config.data.name = "laion"
  with pytest.raises(ConfigError, match="config.data.name='laion'"):
    make_train_data(config, str(tmp_path), io=model_io(config.model))


def test_place_image_follows_llava():
  msgs = lambda text: [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]  # noqa
  assert place_image(msgs("hi"), True)[0]["content"] == "<image>\nhi"
  assert place_image(msgs("<image>\nhi <image>"), True)[0]["content"] == "<image>\nhi "
  assert place_image(msgs("<image>\nhi"), False)[0]["content"] == "hi"


def _hf_tokenizer(tmp_path):
  """A word-level tokenizer.json with Phi-3's chat specials, saved as a HF tokenizer folder."""
  import tokenizers
  from tokenizers import models, pre_tokenizers
  words = ["<unk>", "what", "colour", "?", "red", "\n"]
  tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(" ", "removed"),
      pre_tokenizers.Split(tokenizers.Regex(r"\w+|[^\w\s]|\n"), "isolated")])
  tok.add_special_tokens(["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"])
  tok.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                              "pad_token": "<|endoftext|>"}))
  from input_pipeline.tokenizers import load_tokenizer
  return load_tokenizer(str(tmp_path), chat_format="phi3")


def test_hf_chat_rows_put_image_tokens_where_llava_does(tmp_path):
  tok = _hf_tokenizer(tmp_path)
  io = model_io(florence_vl_3b.get_config("tiny,data=llava_json").model)
  prep = RealDataPreprocess(tok, io, kind="llava_json", max_length=24)
  image = np.zeros((10, 20, 3), np.uint8)
  conv = [{"role": "user", "content": "<image>\nwhat colour?"}, {"role": "assistant", "content": "red"}]
  row = prep({"conversations": json.dumps(conv), "has_image": True, "image": image})
  v = {t: tok.token_to_id(t) for t in ["<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>", "\n",
                                       "what", "colour", "?", "red"]}
  want = ([v["<|user|>"], v["\n"]] + [IMG_ID] * N_IMG + [v["\n"], v["what"], v["colour"], v["?"],
          v["<|end|>"], v["\n"], v["<|assistant|>"], v["\n"], v["red"], v["<|end|>"], v["\n"],
          v["<|endoftext|>"]])
  n = len(want)
  assert row["und_ids"][:n].tolist() == want and (row["und_ids"][n:] == v["<|endoftext|>"]).all()
  assert row["und_mask"].sum() == n
  assert np.flatnonzero(row["und_loss_mask"]).tolist() == [n - 4, n - 3]     # "red<|end|>"
  # Padded to a square with the ImageNet mean (LLaVA's image_aspect_ratio=pad), then resized.
  mean = np.asarray(io.pad_fill, np.float32) / 127.5 - 1
  np.testing.assert_allclose(row["und_image"][0, 32], mean, atol=0.02)
  np.testing.assert_allclose(row["und_image"][32, 32], -1.0, atol=0.02)


def _png(i):
  buf = io.BytesIO()
  Image.fromarray((np.random.RandomState(i).rand(16, 16 + i, 3) * 255).astype(np.uint8)).save(buf, "PNG")
  return buf.getvalue()


@pytest.mark.parametrize("kind", ["webdataset", "array_record"])
def test_caption_sources_become_describe_rows(tmp_path, kind):
  config = florence_vl_3b.get_config(f"tiny,data={kind}")
  if kind == "webdataset":
    from input_pipeline.sources_webdataset import write_webdataset_shard
    write_webdataset_shard(str(tmp_path / "shard-0.tar"), [
        {"__key__": f"s{i}", "png": _png(i), "txt": f"a picture number {i}"} for i in range(4)])
    config.data.source.shards = str(tmp_path / "shard-0.tar")
  else:
    from input_pipeline.sources_records import write_array_record
    write_array_record(str(tmp_path / "caps.array_record"), [
        {"image": _png(i), "caption": f"a picture number {i}"} for i in range(4)])
    config.data.source.paths = str(tmp_path / "caps.array_record")
  config.data.batch_size = 4
  data = make_train_data(config, str(tmp_path / "work"), io=model_io(config.model))
  batch = next(data.iterator)
  answers = {data.tokenizer.decode(r[m > 0]) for r, m in zip(batch["und_ids"], batch["und_loss_mask"])}
  assert answers == {f"a picture number {i} <eos>" for i in range(4)}
  assert ((batch["und_ids"] == IMG_ID).sum(1) == N_IMG).all()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("JAXMODELS_E2E"), reason="about 1-4 min of XLA compiles on 2 cores "
                    "(the jitted init + step of Florence-VL :tiny); set JAXMODELS_E2E=1 to run")
def test_train_py_runs_florence_vl_tiny_on_llava_json(tmp_path):
  """`python train.py --config=configs/florence_vl_3b.py:tiny` on a LLaVA folder: 2 steps, a checkpoint,
  ShapesWorld evals skipped (the data + setup pieces run in every CI pass: test_florence_vl.py's tiny
  step reads rows from make_train_data)."""
  import train
  config = _config(_write_llava(tmp_path))
  config.train.update(total_steps=2, log_every=1, ckpt_every=2)
  config.checkpoint.async_save = False
  work = tmp_path / "run"
  scores = train.train_and_evaluate(config, str(work))
  assert scores == {}                                    # ShapesWorld evals skipped for Florence-VL
  rows = [json.loads(line) for line in open(work / "metrics.jsonl")]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == 2 and all(np.isfinite(losses))
  assert (work / "checkpoints" / "2").is_dir() and (work / "tokenizer.json").is_file()
  assert json.loads((work / "scores.json").read_text())["data_skipped"] >= 1


def test_unified_model_reads_the_same_rows(tmp_path):
  """A UnifiedModel config (MetaQuery-B :tiny) on LLaVA data: rows at its understanding encoder's size."""
  from configs import metaquery_b
  from jaxmodels.trainer.setup import shapes_eval_supported
  config = metaquery_b.get_config("tiny")
  config.data.update(name="llava_json", source=dict(json_path=_write_llava(tmp_path, corrupt=False)),
                     max_length=96, batch_size=4)
  io = model_io(config.model)
  assert io.und_image_size == config.model.und_encoder.image_size == 32
  assert io.num_image_tokens == (32 // 4) ** 2       # the model's own count (its 8×8 grid, no pooling)
  batch = next(make_train_data(config, str(tmp_path / "work"), io=model_io(config.model)).iterator)
  assert batch["und_image"].shape == (4, 32, 32, 3) and batch["und_ids"].shape == (4, 96)
  n = io.num_image_tokens
  assert sorted((batch["und_ids"] == config.model.image_token_id).sum(1)) in ([0, n, n, n], [n] * 4)
  assert not shapes_eval_supported(config, object())


def test_tiny_default_is_shapes_world_at_florence_size(data_dir):
  """`florence_vl_3b.py:tiny` runs out of the box on the embedded ShapesWorld Q/A."""
  config = florence_vl_3b.get_config("tiny")
  assert config.data.name == "shapes_world" and config.model.image_token_id == 4   # WordTokenizer <image>
  config.data.update(data_dir=data_dir, config="tiny", batch_size=4)
  data = make_train_data(config, None, io=model_io(config.model))
  batch = next(data.iterator)
  assert batch["und_image"].shape == (4, 64, 64, 3)
  assert ((batch["und_ids"] == data.tokenizer.image_id).sum(1) == N_IMG).all()
