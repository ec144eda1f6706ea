"""Readers of input_pipeline.sources on tiny files written here: ArrayRecord, TFDS, WebDataset, LLaVA.

Each reader is checked on 2-5 records, and the corrupt-record policy both ways: "raise" gives one
DataError line naming the file and record, "skip" returns the next good record and counts.
"""
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from input_pipeline import sources
from jaxmodels.errors import ConfigError
from jaxmodels.errors import JaxModelsError


def image_bytes(color, size=(6, 4), fmt="PNG") -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", size, color).save(buf, fmt)
  return buf.getvalue()


def assert_one_line(err, *parts):
  msg = str(err)
  assert "\n" not in msg, msg
  for part in parts:
    assert str(part) in msg, (part, msg)


# ------------------------------------------------------------------------------------------------
# ArrayRecord
# ------------------------------------------------------------------------------------------------
def test_record_encoding_round_trips_numpy_and_python_values():
  rec = {"f32": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3), "i16": np.arange(3, dtype=">i2"),
         "flag": np.bool_(True), "n": 7, "x": 0.5, "s": "héllo", "b": b"\x00\x01", "none": None,
         "nested": {"ids": [1, 2, 3], "m": np.eye(2, dtype=np.uint8)}}
  out = sources.decode_record(sources.encode_record(rec))
  np.testing.assert_array_equal(out["f32"], rec["f32"])
  assert out["f32"].dtype == np.float32 and out["i16"].dtype == np.dtype(">i2")
  assert out["flag"].shape == () and bool(out["flag"])
  assert (out["n"], out["x"], out["s"], out["b"], out["none"]) == (7, 0.5, "héllo", b"\x00\x01", None)
  np.testing.assert_array_equal(out["nested"]["m"], np.eye(2))
  assert out["f32"].flags.writeable
  with pytest.raises(sources.DataError, match="cannot encode record"):
    sources.encode_record({"o": object()})


def test_array_record_source_reads_records_and_images(tmp_path):
  path = tmp_path / "caps-00000-of-00002.array_record"
  path2 = tmp_path / "caps-00001-of-00002.array_record"
  assert sources.write_array_record(path, [
      {"image": image_bytes((255, 0, 0)), "caption": "a red box", "label": np.int32(1)},
      {"image": image_bytes((0, 255, 0), fmt="JPEG"), "caption": "a green box", "label": np.int32(2)},
  ]) == 2
  sources.write_array_record(path2, [{"image": image_bytes((0, 0, 255)), "caption": "blue",
                                      "label": np.int32(3)}])
  src = sources.ArrayRecordSource(str(tmp_path / "caps-*.array_record"), image_fields=["image"])
  assert len(src) == 3
  ex = src[2]
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (4, 6, 3)
  assert tuple(ex["image"][0, 0]) == (0, 0, 255) and ex["caption"] == "blue" and ex["label"] == 3
  assert src[-3]["caption"] == "a red box"
  assert src.locate(2) == (str(path2), 0)
  with pytest.raises(IndexError):
    src[3]
  # Pickled (as Grain does for worker processes) it reopens its files lazily.
  clone = pickle.loads(pickle.dumps(src))
  assert clone[1]["caption"] == "a green box"
  assert sources.ArrayRecordSource(str(path), raw=True)[0]["bytes"].startswith(b"\x83")


def _write_with_corrupt_records(tmp_path):
  from array_record.python import array_record_module

  path = str(tmp_path / "mixed.array_record")
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  writer.write(sources.encode_record({"image": image_bytes((9, 9, 9)), "caption": "good 0"}))
  writer.write(sources.encode_record({"image": b"not an image", "caption": "bad image"}))
  writer.write(sources.encode_record({"caption": "no image field"}))
  writer.write(b"\xc1 not msgpack")
  writer.write(sources.encode_record({"image": image_bytes((1, 2, 3)), "caption": "good 4"}))
  writer.close()
  return path


def test_array_record_corrupt_records_raise_naming_file_and_record(tmp_path):
  path = _write_with_corrupt_records(tmp_path)
  src = sources.ArrayRecordSource(path, image_fields=["image"])
  assert src[0]["caption"] == "good 0"
  for index, problem in [(1, "undecodable image"), (2, "missing image field 'image'"),
                         (3, "not a jaxmodels-msgpack-v1 record")]:
    with pytest.raises(sources.DataError) as err:
      src[index]
    assert_one_line(err.value, path, f"record {index}", problem)
    assert isinstance(err.value, JaxModelsError)


def test_array_record_skip_policy_replaces_and_counts(tmp_path):
  path = _write_with_corrupt_records(tmp_path)
  src = sources.make_source({"type": "array_record", "paths": path, "image_fields": ["image"],
                             "on_error": "skip"})
  assert src[1]["caption"] == "good 4"   # records 1, 2, 3 are corrupt: the next good one is 4
  assert src.num_skipped == 3 and src.skipped_indices == {1, 2, 3}
  assert src[4]["caption"] == "good 4" and src.num_skipped == 3
  assert src[3]["caption"] == "good 4" and src.num_skipped == 4
  assert [ex["caption"] for ex in src] == ["good 0", "good 4", "good 4", "good 4", "good 4"]


def test_array_record_bad_files(tmp_path):
  junk = tmp_path / "junk.array_record"
  junk.write_bytes(b"garbage" * 20)
  with pytest.raises(sources.DataError) as err:
    sources.ArrayRecordSource(str(junk))
  assert_one_line(err.value, str(junk), "not a readable ArrayRecord file")
  with pytest.raises(sources.DataError, match="no file matches"):
    sources.ArrayRecordSource(str(tmp_path / "missing-*.array_record"))


# ------------------------------------------------------------------------------------------------
# TFDS (a tiny TensorFlow-free builder written as ArrayRecord)
# ------------------------------------------------------------------------------------------------
def test_tfds_source_reads_a_prepared_dataset(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  class JmTinySources(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "pixels": tfds.features.Tensor(shape=(4, 6, 3), dtype=np.uint8),
          "png": tfds.features.Tensor(shape=(), dtype=np.object_),
          "caption": tfds.features.Text(),
          "label": tfds.features.Tensor(shape=(), dtype=np.int64)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(3), "test": self._generate_examples(2)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"pixels": np.full((4, 6, 3), i, np.uint8), "png": image_bytes((i, 50, 60)),
                  "caption": f"caption {i}", "label": i}

  data_dir = str(tmp_path / "tfds")
  JmTinySources(data_dir=data_dir, file_format="array_record").download_and_prepare()
  src = sources.make_source({"type": "tfds", "name": "jm_tiny_sources", "split": "train",
                             "data_dir": data_dir, "image_fields": ["png"]})
  assert len(src) == 3
  got = sorted((src[i]["caption"], int(src[i]["label"]), int(src[i]["png"][0, 0, 0]),
                int(src[i]["pixels"][0, 0, 0])) for i in range(3))
  assert got == [(f"caption {i}", i, i, i) for i in range(3)]
  assert src[0]["png"].shape == (4, 6, 3) and src[0]["png"].dtype == np.uint8
  assert len(pickle.loads(pickle.dumps(src))) == 3
  with pytest.raises(sources.DataError) as err:
    sources.TfdsSource("jm_tiny_sources", split="validation", data_dir=data_dir)
  assert_one_line(err.value, "jm_tiny_sources", "validation")


# ------------------------------------------------------------------------------------------------
# WebDataset
# ------------------------------------------------------------------------------------------------
def _write_shards(tmp_path):
  sources.write_webdataset_shard(tmp_path / "shard-000.tar", [
      {"__key__": "part/000", "jpg": image_bytes((200, 0, 0), fmt="JPEG"), "txt": " a red square \n"},
      {"__key__": "part/001", "png": image_bytes((0, 200, 0)), "json": {"caption": "green", "w": 6}},
  ])
  sources.write_webdataset_shard(tmp_path / "shard-001.tar", [
      {"__key__": "002", "webp": image_bytes((0, 0, 200), fmt="WEBP"), "txt": "blue",
       "json": {"caption": "ignored: .txt wins"}},
      {"__key__": "003", "png": b"broken png", "txt": "bad image"},
      {"__key__": "004", "png": image_bytes((5, 5, 5))},
      {"__key__": "005", "png": image_bytes((7, 7, 7)), "txt": "last " * 50},
  ])


def test_webdataset_random_access_over_shards(tmp_path, monkeypatch):
  _write_shards(tmp_path)
  src = sources.WebDatasetSource(str(tmp_path / "shard-{000..001}.tar"))
  assert len(src) == 6
  last = src[5]                     # random access: no need to read the shards in order
  assert last["key"] == "005" and last["caption"].startswith("last last")
  ex = src[0]
  assert ex["key"] == "part/000" and ex["caption"] == "a red square"
  assert ex["image"].shape == (4, 6, 3) and ex["image"].dtype == np.uint8 and ex["image"][0, 0, 0] > 150
  assert src[1]["caption"] == "green" and tuple(src[1]["image"][0, 0]) == (0, 200, 0)
  assert src[2]["caption"] == "blue"
  # The index was cached next to each shard; a second source reuses it without scanning.
  assert os.path.exists(tmp_path / "shard-000.tar.index.json")
  again = sources.WebDatasetSource([str(tmp_path / "shard-000.tar"), str(tmp_path / "shard-001.tar")])
  from input_pipeline import sources_webdataset

  def no_scan(*args, **kwargs):
    raise AssertionError("the cached index should have been used")

  monkeypatch.setattr(sources_webdataset, "_scan_shard", no_scan)
  assert len(again) == 6 and again[1]["caption"] == "green"
  clone = pickle.loads(pickle.dumps(src))
  assert clone[2]["caption"] == "blue"


def test_webdataset_corrupt_samples_raise_or_skip(tmp_path):
  _write_shards(tmp_path)
  shard = str(tmp_path / "shard-001.tar")
  strict = sources.WebDatasetSource(str(tmp_path / "shard-*.tar"), cache_index=False)
  with pytest.raises(sources.DataError) as err:
    strict[3]
  assert_one_line(err.value, shard, "'003'", "undecodable image")
  with pytest.raises(sources.DataError) as err:
    strict[4]
  assert_one_line(err.value, shard, "'004'", "no caption")
  lenient = sources.WebDatasetSource(str(tmp_path / "shard-*.tar"), on_error="skip",
                                     cache_index=False)
  assert lenient[3]["key"] == "005" and lenient.num_skipped == 2
  assert lenient.skipped_indices == {3, 4}


def test_webdataset_broken_shards(tmp_path):
  _write_shards(tmp_path)
  good = (tmp_path / "shard-001.tar").read_bytes()
  cut = tmp_path / "cut.tar"
  # Keep the first samples whole and cut inside the last member's data (005.txt, 250 bytes).
  with tarfile.open(tmp_path / "shard-001.tar") as tf:
    last = tf.getmembers()[-1]
  assert last.name == "005.txt"
  cut.write_bytes(good[: last.offset_data + 100])
  with pytest.raises(sources.DataError) as err:
    len(sources.WebDatasetSource(str(cut), cache_index=False))
  assert_one_line(err.value, str(cut), "broken tar")
  # With "skip", the samples before the damage stay readable and the cut one is skipped.
  lenient = sources.WebDatasetSource(str(cut), on_error="skip", cache_index=False)
  assert len(lenient) == 4 and lenient[0]["key"] == "002"
  assert lenient[3]["key"] == "002" and lenient.skipped_indices == {3}   # 005.txt is cut short
  gz = tmp_path / "shard.tar.gz"
  import gzip
  gz.write_bytes(gzip.compress(good))
  with pytest.raises(sources.DataError) as err:
    len(sources.WebDatasetSource(str(gz)))
  assert_one_line(err.value, str(gz), "uncompressed")


# ------------------------------------------------------------------------------------------------
# LLaVA conversation JSON
# ------------------------------------------------------------------------------------------------
def _write_llava(tmp_path, records, name="llava.json"):
  (tmp_path / "images" / "coco").mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (8, 5), (10, 20, 30)).save(tmp_path / "images" / "coco" / "1.jpg")
  (tmp_path / "images" / "coco" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
  path = tmp_path / name
  if name.endswith(".jsonl"):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
  else:
    path.write_text(json.dumps(records))
  return str(path)


GOOD = [
    {"id": "a1", "image": "coco/1.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is it?"},
        {"from": "gpt", "value": "Dark blue."}]},
    {"id": "t2", "conversations": [{"from": "system", "value": "Be brief."},
                                   {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
]


@pytest.mark.parametrize("name", ["llava.json", "llava.jsonl"])
def test_llava_json_source(tmp_path, name):
  path = _write_llava(tmp_path, GOOD, name)
  src = sources.make_source({"type": "llava_json", "json_path": path,
                             "image_dir": str(tmp_path / "images")})
  assert len(src) == 2
  ex = src[0]
  assert ex["id"] == "a1" and ex["has_image"] and ex["image"].shape == (5, 8, 3)
  assert ex["image_path"].endswith("coco/1.jpg")
  assert json.loads(ex["conversations"]) == [
      {"role": "user", "content": "<image>\nWhat colour is it?"},
      {"role": "assistant", "content": "Dark blue."}]
  text = src[1]
  assert not text["has_image"] and text["image"].shape == (0, 0, 3)
  assert [m["role"] for m in json.loads(text["conversations"])] == ["system", "user", "assistant"]
  assert pickle.loads(pickle.dumps(src))[0]["id"] == "a1"


def test_llava_corrupt_records(tmp_path):
  bad = [GOOD[0],
         {"id": "m1", "image": "coco/missing.jpg", "conversations": GOOD[0]["conversations"]},
         {"id": "b2", "image": "coco/broken.jpg", "conversations": GOOD[0]["conversations"]},
         {"id": "n3", "image": "coco/1.jpg"},
         {"id": "r4", "conversations": [{"from": "robot", "value": "beep"}]},
         GOOD[1]]
  path = _write_llava(tmp_path, bad)
  src = sources.LlavaJsonSource(path, image_dir=str(tmp_path / "images"))
  for index, rid, problem in [(1, "m1", "missing.jpg"), (2, "b2", "undecodable image"),
                              (3, "n3", "'conversations'"), (4, "r4", "unknown role 'robot'")]:
    with pytest.raises(sources.DataError) as err:
      src[index]
    assert_one_line(err.value, path, f"record {index}", rid, problem)
  lenient = sources.LlavaJsonSource(path, image_dir=str(tmp_path / "images"), on_error="skip")
  assert lenient[1]["id"] == "t2" and lenient.num_skipped == 4
  strict_image = sources.LlavaJsonSource(path, image_dir=str(tmp_path / "images"),
                                         require_image=True)
  with pytest.raises(sources.DataError, match="missing field 'image'"):
    strict_image[5]
  (tmp_path / "broken.json").write_text('[{"id": 1,')
  with pytest.raises(sources.DataError) as err:
    sources.LlavaJsonSource(str(tmp_path / "broken.json"))
  assert_one_line(err.value, "broken.json", "not valid JSON")


# ------------------------------------------------------------------------------------------------
# make_source and helpers
# ------------------------------------------------------------------------------------------------
def test_make_source_validates_the_spec(tmp_path):
  with pytest.raises(ConfigError, match="type='csv'"):
    sources.make_source({"type": "csv"})
  with pytest.raises(ConfigError, match="unknown key 'shard'"):
    sources.make_source({"type": "webdataset", "shard": "x.tar"})
  with pytest.raises(ConfigError, match="missing required key 'json_path'"):
    sources.make_source({"type": "llava_json"})
  with pytest.raises(ConfigError, match="on_error='ignore'"):
    sources.make_source({"type": "llava_json", "json_path": "x.json", "on_error": "ignore"})
  import ml_collections
  _write_shards(tmp_path)
  spec = ml_collections.ConfigDict({"type": "webdataset", "shards": str(tmp_path / "shard-000.tar")})
  assert len(sources.make_source(spec)) == 2
  assert set(sources.source_types()) == {"tfds", "array_record", "webdataset", "llava_json"}


def test_expand_paths(tmp_path):
  for name in ["d-08.tar", "d-09.tar", "d-10.tar", "e.tar"]:
    (tmp_path / name).write_bytes(b"")
  got = sources.expand_paths(f"{tmp_path}/d-{{08..10}}.tar,{tmp_path}/e*", what="shards")
  assert [os.path.basename(p) for p in got] == ["d-08.tar", "d-09.tar", "d-10.tar", "e.tar"]
  with pytest.raises(sources.DataError) as err:
    sources.expand_paths(f"{tmp_path}/d-{{10..11}}.tar", what="shards")
  assert_one_line(err.value, "d-11.tar")
