"""input_pipeline.pipeline: determinism, process sharding, batch shapes, checkpointable iterators,
mixtures (proportions and state), worker processes, and a source -> tokenizer -> batch example.
"""
import functools
import io
import json

import numpy as np
import pytest
from PIL import Image

from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import tokenizers
from jaxmodels.errors import ConfigError


class RangeSource:
  """n records {"idx", "image" [4, 4, 3], "text"}; optionally tagged with a component id."""

  def __init__(self, n, tag=0):
    self.n, self.tag = n, tag

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    i = int(i)
    return {"idx": np.int64(i), "tag": np.int64(self.tag),
            "image": np.full((4, 4, 3), i % 256, np.uint8), "text": f"r{i}"}


def add_offset(ex, offset):
  return {**ex, "idx": ex["idx"] + offset}


def build(src, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  kw.setdefault("seed", 0)
  kw.setdefault("batch_size", 4)
  return pipeline.make_dataset(src, **kw)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_batch_shapes_and_dtypes():
  batch = next(iter(build(RangeSource(10), preprocess=functools.partial(add_offset, offset=100))))
  assert batch["idx"].shape == (4,) and batch["idx"].dtype == np.int64 and batch["idx"].min() >= 100
  assert batch["image"].shape == (4, 4, 4, 3) and batch["image"].dtype == np.uint8
  assert batch["text"].shape == (4,) and str(batch["text"][0]).startswith("r")


def test_order_is_determined_by_the_seed():
  first = take(iter(build(RangeSource(50), seed=7)), 5)
  again = take(iter(build(RangeSource(50), seed=7, read_threads=0)), 5)
  assert_batches_equal(first, again)
  other = take(iter(build(RangeSource(50), seed=8)), 5)
  assert any(not np.array_equal(a["idx"], b["idx"]) for a, b in zip(first, other))
  ordered = take(iter(build(RangeSource(50), shuffle=False)), 2)
  assert ordered[0]["idx"].tolist() == [0, 1, 2, 3] and ordered[1]["idx"].tolist() == [4, 5, 6, 7]


def test_epochs_are_reshuffled_permutations():
  ex = list(build(RangeSource(12), num_epochs=2, batch_size=None))
  ids = [int(e["idx"]) for e in ex]
  assert len(ids) == 24
  assert sorted(ids[:12]) == list(range(12)) and sorted(ids[12:]) == list(range(12))
  assert ids[:12] != ids[12:]


def test_process_shards_are_disjoint_and_cover_the_data():
  n, count = 23, 3
  shards = []
  for index in range(count):
    ds = build(RangeSource(n), num_epochs=1, batch_size=None, process_index=index,
               process_count=count)
    shards.append([int(e["idx"]) for e in ds])
  assert sum(len(s) for s in shards) == n
  assert set().union(*map(set, shards)) == set(range(n))
  for a in range(count):
    for b in range(a + 1, count):
      assert not set(shards[a]) & set(shards[b])
  # Per-process batches: drop_remainder drops only each shard's partial last batch.
  sizes = [len(list(build(RangeSource(n), num_epochs=1, batch_size=3, process_index=i,
                          process_count=count))) for i in range(count)]
  assert sizes == [2, 2, 2]
  kept = [b["idx"].shape[0] for b in build(RangeSource(n), num_epochs=1, batch_size=3,
                                           process_index=0, process_count=count,
                                           drop_remainder=False)]
  assert kept == [3, 3, 3]          # process 0's block of the last (partial) global batch: 18-20


def test_process_blocks_assemble_the_single_process_batches():
  """Process p reads rows [p*L, (p+1)*L) of each global batch: concatenated in process order, the
  per-process batches are the single-process batches (multi-host runs see the same global batches)."""
  alone = iter(build(RangeSource(50), batch_size=6))
  parts = [iter(build(RangeSource(50), batch_size=2, process_index=p, process_count=3)) for p in range(3)]
  for _ in range(12):                # past the first epoch (8 global batches of 6)
    expected = next(alone)["idx"]
    np.testing.assert_array_equal(np.concatenate([next(it)["idx"] for it in parts]), expected)


@pytest.mark.parametrize("read_threads", [0, 2])
def test_iterator_state_restores_the_identical_next_batches(read_threads):
  def make():
    return build(RangeSource(37), seed=3, num_epochs=None, read_threads=read_threads,
                 preprocess=functools.partial(add_offset, offset=1))
  it = iter(make())
  take(it, 11)                                           # crosses an epoch boundary (37 / 4)
  state = json.loads(json.dumps(it.get_state()))         # state is small and JSON-able
  reference = take(it, 6)
  resumed = iter(make())
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 6), reference)


def test_mixture_follows_weights_and_restores():
  def components():
    return {"und": build(RangeSource(30, tag=0), batch_size=None, seed=1),
            "gen": build(RangeSource(20, tag=1), batch_size=None, seed=2)}

  mix = pipeline.mixture(components(), {"und": 4.0, "gen": 1.0}, batch_size=10)
  it = iter(mix)
  tags = np.concatenate([b["tag"] for b in take(it, 100)])
  assert abs(tags.mean() - 0.2) < 0.04, tags.mean()
  state = json.loads(json.dumps(it.get_state()))
  assert len(state["parents"]) == 2                      # one state per component
  reference = take(it, 5)
  resumed = iter(pipeline.mixture(components(), {"und": 4.0, "gen": 1.0}, batch_size=10))
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 5), reference)


def test_mixture_state_round_trips_through_orbax(tmp_path):
  """The trainer saves the iterator with grain.checkpoint.CheckpointSave inside an Orbax step."""
  grain = pytest.importorskip("grain")
  ocp = pytest.importorskip("orbax.checkpoint")

  def make():
    return pipeline.mixture({"a": build(RangeSource(30, tag=0), batch_size=None),
                             "b": build(RangeSource(20, tag=1), batch_size=None, seed=4)},
                            {"a": 0.6, "b": 0.4}, batch_size=4)

  it = iter(make())
  take(it, 5)
  manager = ocp.CheckpointManager(str(tmp_path), item_names=("data",))
  manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  assert (tmp_path / "5" / "data" / "process_0-of-1.json").exists()
  reference = take(it, 3)
  resumed = iter(make())
  manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  assert_batches_equal(take(resumed, 3), reference)
  manager.close()


def test_mixture_of_batched_components_gives_single_task_batches():
  a = build(RangeSource(16, tag=0), batch_size=4)
  b = build(RangeSource(16, tag=1), batch_size=2)
  batches = take(iter(pipeline.mixture([a, b], [0.5, 0.5])), 20)
  sizes = {int(x["tag"][0]): x["tag"].shape[0] for x in batches}
  assert sizes == {0: 4, 1: 2}
  assert all(len(set(x["tag"].tolist())) == 1 for x in batches)


def test_stack_batch_names_the_mismatched_field():
  with pytest.raises(sources.DataError) as err:
    pipeline.stack_batch([{"img": np.zeros((4, 4, 3))}, {"img": np.zeros((5, 4, 3))}])
  assert "'img'" in str(err.value) and "(4, 4, 3)" in str(err.value)
  with pytest.raises(sources.DataError, match="different keys"):
    pipeline.stack_batch([{"a": 1}, {"b": 1}])
  out = pipeline.stack_batch([{"t": (np.int32(1), "x")}, {"t": (np.int32(2), "y")}])
  assert out["t"][0].tolist() == [1, 2] and out["t"][1].tolist() == ["x", "y"]


def test_config_errors():
  with pytest.raises(ConfigError, match="batch_size=0"):
    build(RangeSource(4), batch_size=0)
  with pytest.raises(ConfigError, match="process_index=3"):
    build(RangeSource(4), process_index=3, process_count=2)
  with pytest.raises(sources.DataError, match="no records"):
    build(RangeSource(0))
  with pytest.raises(ConfigError, match="must name exactly"):
    pipeline.mixture({"a": build(RangeSource(4))}, {"b": 1.0})
  with pytest.raises(ConfigError, match="must be finite and >= 0"):
    pipeline.mixture([build(RangeSource(4))], [-1.0])
  with pytest.raises(ConfigError, match="2 weights for 1 datasets"):
    pipeline.mixture([build(RangeSource(4))], [1.0, 2.0])


def test_pad_tokens():
  tokens, mask = pipeline.pad_tokens([5, 6, 7], 5, pad_id=0)
  assert tokens.tolist() == [5, 6, 7, 0, 0] and mask.tolist() == [True] * 3 + [False] * 2
  tokens, mask = pipeline.pad_tokens(range(9), 4, pad_id=0)
  assert tokens.tolist() == [0, 1, 2, 3] and mask.all()


# ------------------------------------------------------------------------------------------------
# Real sources through the pipeline
# ------------------------------------------------------------------------------------------------
def png(value):
  buf = io.BytesIO()
  Image.new("RGB", (8, 6), (value, 0, 0)).save(buf, "PNG")
  return buf.getvalue()


def caption_example(ex, tok, length):
  """What a trainer's preprocess does: crop/resize the image, tokenise and pad the caption."""
  tokens, mask = pipeline.pad_tokens(tok.encode(ex["caption"], add_bos=True, add_eos=True),
                                     length, tok.pad_id)
  return {"image": ex["image"][:4, :4].astype(np.float32) / 127.5 - 1.0, "tokens": tokens,
          "mask": mask}


def test_webdataset_with_word_tokenizer_in_worker_processes(tmp_path):
  captions = ["a red circle", "a blue square", "two red squares", "a red circle left of a square"]
  sources.write_webdataset_shard(tmp_path / "s-0.tar", [
      {"__key__": f"{i:03d}", "png": png(10 * i), "txt": captions[i % 4]} for i in range(10)])
  tok = tokenizers.WordTokenizer.from_texts(captions)
  src = sources.make_source({"type": "webdataset", "shards": str(tmp_path / "s-0.tar")})
  prep = functools.partial(caption_example, tok=tok, length=8)

  def make(workers):
    return build(src, batch_size=2, preprocess=prep, worker_count=workers, seed=5)

  it = iter(make(0))
  expected = take(it, 7)
  assert expected[0]["image"].shape == (2, 4, 4, 3) and expected[0]["tokens"].shape == (2, 8)
  assert expected[0]["tokens"][:, 0].tolist() == [tok.bos_id] * 2
  workers = iter(make(1))                                 # the source is pickled to a worker
  got = take(workers, 4)
  state = workers.get_state()
  assert_batches_equal(got, expected[:4])
  resumed = iter(make(1))
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), expected[4:7])
  for i in (workers, resumed):
    if hasattr(i, "close"):
      i.close()


############################ Corrupt records ###############################

class TruncatedPngSource(RangeSource):
  """RangeSource whose records i % 7 == 3 carry a truncated PNG that fails to decode."""

  def __getitem__(self, i):
    ex = super().__getitem__(i)
    buf = io.BytesIO()
    Image.fromarray(ex["image"]).save(buf, format="PNG")
    png = buf.getvalue()
    ex["png"] = png[: len(png) // 2] if int(i) % 7 == 3 else png
    return ex


def decode_png(ex):
  return {"idx": ex["idx"], "image": np.asarray(Image.open(io.BytesIO(ex["png"])).convert("RGB"))}


def test_corrupt_record_raise_names_the_record():
  ds = build(TruncatedPngSource(20), batch_size=4, shuffle=False, preprocess=decode_png, on_error="raise")
  it = iter(ds)
  with pytest.raises(sources.DataError, match=r"TruncatedPngSource: record 3 is corrupt \(.*on_error='skip'"):
    next(it)
  with pytest.raises(ConfigError, match=r"on_error='ignore'.*expected one of \('raise', 'skip'\)"):
    build(TruncatedPngSource(20), batch_size=4, on_error="ignore")


def test_corrupt_record_skip_replaces_counts_and_resumes_identically():
  before = pipeline.skipped_count()
  ds = build(TruncatedPngSource(20), batch_size=4, shuffle=False, preprocess=decode_png, on_error="skip")
  it = iter(ds)
  first = next(it)["idx"].tolist()
  assert first == [0, 1, 2, 4]                      # record 3 replaced by the next good one
  assert pipeline.skipped_count() >= before + 1      # (read-ahead threads may have met more)
  state = it.get_state()
  rest = [next(it)["idx"].tolist() for _ in range(3)]
  assert rest[1] == [8, 9, 11, 11]                  # 10 % 7 == 3 -> 11
  again = iter(ds)
  again.set_state(state)
  assert [next(again)["idx"].tolist() for _ in range(3)] == rest
  # The policy can be set around code that builds pipelines without passing it (train.py).
  with pipeline.corrupt_record_policy("skip"):
    quiet = build(TruncatedPngSource(20), batch_size=4, shuffle=False, preprocess=decode_png)
  assert next(iter(quiet))["idx"].tolist() == [0, 1, 2, 4]
  with pytest.raises(sources.DataError):
    next(iter(build(TruncatedPngSource(20), batch_size=4, shuffle=False, preprocess=decode_png)))
