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


# ------------------------------------------------------------------------------------------------
# decode_image: every image mode a record can carry -> uint8 [H, W, 3] RGB
# ------------------------------------------------------------------------------------------------
import colorsys  # noqa: E402
import struct  # noqa: E402
import types  # noqa: E402
import zlib  # noqa: E402

BG = np.asarray(sources.ALPHA_BACKGROUND, np.float64)


def encoded(img, fmt, **kw) -> bytes:
  buf = io.BytesIO()
  img.save(buf, fmt, **kw)
  return buf.getvalue()


def over_background(color, alpha, premultiplied=False):
  """The blend rule in floats: straight `c * a + bg * (1 - a)`, premultiplied `c + bg * (1 - a)`."""
  c = np.asarray(color, np.float64)
  a = np.asarray(alpha, np.float64)[..., None] / 255.0
  return (c if premultiplied else c * a) + BG * (1.0 - a)


def gray3(values):
  v = np.asarray(values)
  return np.repeat(v[..., None], 3, axis=-1)


def png16(values: np.ndarray, color_type: int) -> bytes:
  """A 16-bit PNG written by hand (Pillow writes only gray as 16-bit): color_type 0 gray, 2 RGB,
  4 gray + alpha, 6 RGBA; `values` is uint16 [H, W] or [H, W, C]."""
  h, w = values.shape[:2]
  rows = b"".join(b"\x00" + np.ascontiguousarray(values[y]).astype(">u2").tobytes() for y in range(h))

  def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

  header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
          + chunk(b"IEND", b""))


def tiff_associated_alpha(img) -> bytes:
  """`img` ("LA"/"RGBA") saved as TIFF with its alpha marked associated (premultiplied): Pillow
  writes ExtraSamples = 2 (unassociated); the tag is patched to 1."""
  data = encoded(img, "TIFF")
  tag = struct.pack("<HHIH", 338, 3, 1, 2)   # ExtraSamples, SHORT, count 1, value 2
  assert data.count(tag) == 1
  return data.replace(tag, struct.pack("<HHIH", 338, 3, 1, 1))


U16_RAMP = np.array([[0, 1, 255, 256], [257, 32767, 32768, 65535]], np.uint16)
PALETTE = [0, 0, 0, 200, 10, 20, 30, 40, 50]


def palette_image(mode="P", alpha=None):
  img = Image.frombytes(mode, (3, 1), bytes([0, 1, 2]) if alpha is None
                        else bytes(v for pair in zip([0, 1, 2], alpha) for v in pair))
  img.putpalette(PALETTE)
  return img


def _cases():
  """name -> (encoded bytes or a Pillow image for `image_to_rgb`, expected [H, W, 3], tolerance)."""
  ramp = U16_RAMP
  ramp8 = (ramp >> 8).astype(np.uint8)
  alpha = np.array([[0, 1, 128, 255]], np.uint8)
  gray = np.array([[10, 100, 200, 250]], np.uint8)
  rgb = np.array([[[200, 30, 60], [0, 0, 0], [255, 255, 255], [12, 130, 250]]], np.uint8)
  floats = np.array([[0.0, 0.25, 0.5, 1.0, -0.5, 2.0, 0.4 / 255, 0.6 / 255, 0.999]], np.float32)
  premul = np.minimum(rgb, alpha[..., None])   # premultiplied colour never exceeds alpha
  cmyk = np.array([[[0, 0, 0, 0], [100, 50, 200, 30], [255, 0, 0, 0], [0, 0, 0, 255]]], np.uint8)
  ycc = np.array([[[100, 128, 128], [50, 200, 60], [200, 90, 170], [255, 0, 255]]], np.uint8)
  hsv = np.array([[[0, 0, 255], [0, 255, 255], [85, 255, 128], [247, 216, 200]]], np.uint8)
  cases = {
      "1": (encoded(Image.frombytes("1", (8, 1), bytes([0b10110000])), "PNG"),
            gray3(np.array([[255, 0, 255, 255, 0, 0, 0, 0]], np.uint8)), 0),
      "L": (encoded(Image.fromarray(gray), "PNG"), gray3(gray), 0),
      "L+tRNS": (encoded(Image.fromarray(gray), "PNG", transparency=100),
                 gray3(np.where(gray == 100, 255, gray)), 0),
      "RGB": (encoded(Image.fromarray(rgb), "PNG"), rgb, 0),
      "RGB+tRNS": (encoded(Image.fromarray(rgb), "PNG", transparency=(12, 130, 250)),
                   np.where(np.all(rgb == (12, 130, 250), -1, keepdims=True), BG, rgb), 0),
      "RGBX": (Image.fromarray(np.dstack([rgb, np.full(gray.shape, 77, np.uint8)]), "RGBX"), rgb, 0),
      "P": (encoded(palette_image(), "PNG"), np.reshape(PALETTE, (1, 3, 3)), 0),
      # PNG tRNS per palette entry: entry 0 opaque, 1 half transparent, 2 fully transparent.
      "P+tRNS": (encoded(palette_image(), "PNG", transparency=bytes([255, 128, 0])),
                 over_background(np.reshape(PALETTE, (1, 3, 3)), [[255, 128, 0]]), 1),
      "P GIF transparent index": (encoded(palette_image(), "GIF", transparency=2),
                                  np.array([[[0, 0, 0], [200, 10, 20], BG]]), 0),
      "PA": (encoded(palette_image("PA", alpha=[255, 128, 0]), "TIFF"),
             over_background(np.reshape(PALETTE, (1, 3, 3)), [[255, 128, 0]]), 1),
      "LA": (encoded(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG"),
             over_background(gray3(gray), alpha), 1),
      "RGBA": (encoded(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"),
               over_background(rgb, alpha), 1),
      "RGBA WebP": (encoded(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "WEBP", lossless=True,
                            exact=True), over_background(rgb, alpha), 1),
      # Premultiplied: colour <= alpha.
      "La": (tiff_associated_alpha(Image.fromarray(np.dstack([[[0, 1, 100, 250]], alpha]).astype(
          np.uint8), "LA")), over_background(gray3([[0, 1, 100, 250]]), alpha, True), 1),
      "RGBa TIFF": (tiff_associated_alpha(Image.fromarray(np.dstack([premul, alpha]), "RGBA")),
                    over_background(premul, alpha, True), 1),
      "RGBa": (Image.frombytes("RGBa", (4, 1), np.dstack([premul, alpha]).tobytes()),
               over_background(premul, alpha, True), 1),
      "I;16 PNG": (encoded(Image.frombytes("I;16", (4, 2), ramp.astype("<u2").tobytes()), "PNG"),
                   gray3(ramp8), 0),
      "I;16 PNG+tRNS": (encoded(Image.frombytes("I;16", (4, 2), ramp.astype("<u2").tobytes()), "PNG",
                                transparency=256), gray3(np.where(ramp == 256, 255, ramp8)), 0),
      "I;16B TIFF": (encoded(Image.frombytes("I;16B", (4, 2), ramp.astype(">u2").tobytes()), "TIFF"),
                     gray3(ramp8), 0),
      "I;16L TIFF": (encoded(Image.frombytes("I;16L", (4, 2), ramp.astype("<u2").tobytes()), "TIFF"),
                     gray3(ramp8), 0),
      "I;16N": (Image.frombytes("I;16N", (4, 2), ramp.astype("=u2").tobytes()), gray3(ramp8), 0),
      "I TIFF": (encoded(Image.fromarray(ramp.astype(np.int32)), "TIFF"), gray3(ramp8), 0),
      "F TIFF": (encoded(Image.fromarray(floats), "TIFF"),
                 gray3(np.array([[0, 64, 128, 255, 0, 255, 0, 1, 255]])), 0),
      # 16-bit PNGs with colour: Pillow itself keeps the high byte (the same >> 8 rule).
      "RGB 16-bit PNG": (png16(np.dstack([ramp, ramp[:, ::-1], ramp // 2]), 2),
                         np.dstack([ramp8, ramp8[:, ::-1], (ramp // 2) >> 8]), 0),
      "RGBA 16-bit PNG": (png16(np.dstack([ramp, ramp, ramp, np.full_like(ramp, 32768)]), 6),
                          over_background(gray3(ramp8), np.full(ramp.shape, 128)), 1),
      "LA 16-bit PNG": (png16(np.dstack([ramp, np.full_like(ramp, 65535)]), 4), gray3(ramp8), 0),
      "CMYK TIFF": (encoded(Image.fromarray(cmyk, "CMYK"), "TIFF"),
                    (255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255.0, 1),
      # JPEG is lossy (and Adobe CMYK JPEGs are stored inverted): a flat patch stays within a few.
      "CMYK JPEG": (encoded(Image.new("CMYK", (8, 8), (100, 50, 200, 30)), "JPEG", quality=100),
                    np.full((8, 8, 3), [155 * 225 / 255, 205 * 225 / 255, 55 * 225 / 255]), 4),
      "YCbCr TIFF": (encoded(Image.fromarray(ycc, "YCbCr"), "TIFF"), np.clip(np.dstack([
          ycc[..., 0] + 1.402 * (ycc[..., 2] - 128.0),
          ycc[..., 0] - 0.344136 * (ycc[..., 1] - 128.0) - 0.714136 * (ycc[..., 2] - 128.0),
          ycc[..., 0] + 1.772 * (ycc[..., 1] - 128.0)]), 0, 255), 1),
      "HSV": (Image.fromarray(hsv, "HSV"), np.array([[[255 * c for c in colorsys.hsv_to_rgb(
          *(v / 255.0 for v in px))] for px in hsv[0]]]), 1),
  }
  return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_decode_image_mode(name):
  source, expected, tol = CASES[name]
  if isinstance(source, bytes):
    got = sources.decode_image(source, where=f"case {name}")
  else:
    got = sources.image_to_rgb(source, where=f"case {name}")
  expected = np.asarray(expected, np.float64)
  assert got.dtype == np.uint8 and got.ndim == 3 and got.shape == expected.shape
  assert got.flags.c_contiguous
  np.testing.assert_allclose(got.astype(np.float64), expected, rtol=0, atol=tol + 1e-6,
                             err_msg=name)


def lab_to_srgb_reference(lab_bytes: np.ndarray) -> np.ndarray:
  """CIE L*a*b* (D50) -> sRGB by the formulas: Lab -> XYZ, the Bradford-adapted D50 XYZ -> linear
  sRGB matrix, then the sRGB curve. `lab_bytes` is Pillow's LAB layout (a*, b* signed)."""
  lab = lab_bytes.astype(np.uint8)
  lstar = lab[..., 0] / 255.0 * 100.0
  a, b = lab[..., 1].view(np.int8).astype(float), lab[..., 2].view(np.int8).astype(float)
  fy = (lstar + 16.0) / 116.0
  f = np.stack([fy + a / 500.0, fy, fy - b / 200.0], -1)
  xyz = np.where(f ** 3 > 216 / 24389, f ** 3, (116.0 * f - 16.0) * 27 / 24389)
  xyz = xyz * [0.9642, 1.0, 0.8249]   # the D50 white
  to_rgb = np.array([[3.1338561, -1.6168667, -0.4906146], [-0.9787684, 1.9161415, 0.0334540],
                     [0.0719453, -0.2289914, 1.4052427]])
  linear = np.clip(xyz @ to_rgb.T, 0.0, 1.0)
  return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055) * 255.0


def test_decode_image_lab_via_littlecms():
  """LAB (a TIFF CIELab file) -> sRGB within 1 of the CIE formulas, neutral and coloured pixels."""
  pytest.importorskip("PIL.ImageCms")
  # Signed bytes as Pillow holds them: the L* byte 255 (white) reads -1 here, 134 reads -122.
  signed = np.array([[[-1, 0, 0], [0, 0, 0], [50, 0, 0], [80, 60, 10], [113, 64, 30],
                      [-122, -5, -44], [60, -40, 30], [-56, 10, 70]]], np.int8)
  lab = signed.view(np.uint8)
  data = encoded(Image.fromarray(lab, "LAB"), "TIFF")
  assert Image.open(io.BytesIO(data)).mode == "LAB"
  got = sources.decode_image(data, where="lab.tif")
  expected = lab_to_srgb_reference(lab)
  np.testing.assert_allclose(got.astype(float), expected, atol=1)
  assert got[0, 1].tolist() == [0, 0, 0] and got[0, 0].min() >= 254


def test_decode_image_16bit_gray_no_longer_turns_white():
  """The bug: `convert("RGB")` clipped 16-bit gray to 255: a full-range ramp came back ~all white."""
  ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
  data = encoded(Image.frombytes("I;16", (256, 256), ramp.astype("<u2").tobytes()), "PNG")
  old = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  assert (old == 255).mean() > 0.99                       # what decode_image used to return
  got = sources.decode_image(data, where="ramp.png")
  assert got.shape == (256, 256, 3)
  np.testing.assert_array_equal(got, gray3((ramp >> 8).astype(np.uint8)))
  assert (got == 255).mean() == pytest.approx(1 / 256)    # only 65280..65535 map to 255
  assert got[..., 0].mean() == pytest.approx(127.5)


def test_decode_image_rejects_values_without_an_rgb_reading():
  cases = [
      (Image.fromarray(np.array([[0, 70000]], np.int32)), "mode I values 0..70000"),
      (Image.fromarray(np.array([[-5, 10]], np.int32)), "mode I values -5..10"),
      (Image.fromarray(np.array([[0.5, np.nan]], np.float32)), "NaN or infinite"),
      (Image.fromarray(np.array([[np.inf, 0.0]], np.float32)), "NaN or infinite"),
  ]
  for img, problem in cases:
    with pytest.raises(sources.CorruptRecord) as err:
      sources.decode_image(encoded(img, "TIFF"), where="shard-3.tar sample '42'")
    assert_one_line(err.value, "shard-3.tar sample '42'", problem)


def test_image_to_rgb_unsupported_mode_is_one_line_naming_where():
  # Pillow >= 12 opens no other mode; a stand-in carries one this function was not written for.
  odd = types.SimpleNamespace(mode="I;16S", info={})
  with pytest.raises(sources.CorruptRecord) as err:
    sources.image_to_rgb(odd, where="/data/x.json record 7 (id 'q')")
  assert str(err.value) == "/data/x.json record 7 (id 'q'): unsupported image mode I;16S"


def test_decode_image_lab_without_littlecms_is_unsupported(monkeypatch):
  ImageCms = pytest.importorskip("PIL.ImageCms")

  def missing(*args, **kwargs):   # what ImageCms does when Pillow was built without LittleCMS
    raise ImportError("The _imagingcms C module is not installed")

  monkeypatch.setattr(sources, "_LAB_TRANSFORM", [])
  monkeypatch.setattr(ImageCms, "buildTransform", missing)
  data = encoded(Image.new("LAB", (2, 2)), "TIFF")
  with pytest.raises(sources.CorruptRecord) as err:
    sources.decode_image(data, where="lab.tif")
  assert_one_line(err.value, "lab.tif: unsupported image mode LAB")


@pytest.mark.parametrize("fmt,kw", [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})])
def test_decode_image_animated_gives_first_frame(fmt, kw):
  frames = [Image.new("RGB", (5, 3), c) for c in [(200, 0, 0), (0, 200, 0), (0, 0, 200)]]
  data = encoded(frames[0], fmt, save_all=True, append_images=frames[1:], **kw)
  assert Image.open(io.BytesIO(data)).n_frames == 3
  got = sources.decode_image(data, where=f"anim.{fmt.lower()}")
  assert got.shape == (3, 5, 3) and (got == (200, 0, 0)).all()


def test_decode_image_keeps_stored_orientation():
  """EXIF orientation is not applied: the pixels come back as stored."""
  img = Image.new("RGB", (6, 4), (1, 2, 3))
  exif = img.getexif()
  exif[0x0112] = 6   # "rotate 90 CW to display"
  got = sources.decode_image(encoded(img, "JPEG", exif=exif.tobytes()), where="rotated.jpg")
  assert got.shape == (4, 6, 3)


def test_decode_image_undecodable_and_truncated_bytes():
  png = image_bytes((1, 2, 3), size=(64, 64))
  for data in [b"", b"not an image", png[: len(png) // 2]]:
    with pytest.raises(sources.CorruptRecord) as err:
      sources.decode_image(data, where="x.tar sample 'k'")
    assert_one_line(err.value, "x.tar sample 'k'", "undecodable image")


def test_readers_decode_16bit_and_transparent_images(tmp_path):
  ramp = U16_RAMP
  png = encoded(Image.frombytes("I;16", (4, 2), ramp.astype("<u2").tobytes()), "PNG")
  clear = encoded(Image.new("RGBA", (4, 2), (9, 9, 9, 0)), "PNG")
  sources.write_webdataset_shard(tmp_path / "s.tar", [{"__key__": "a", "png": png, "txt": "ramp"},
                                                      {"__key__": "b", "png": clear, "txt": "clear"}])
  src = sources.WebDatasetSource(str(tmp_path / "s.tar"), cache_index=False)
  np.testing.assert_array_equal(src[0]["image"][..., 0], (ramp >> 8).astype(np.uint8))
  assert (src[1]["image"] == sources.ALPHA_BACKGROUND).all()
  (tmp_path / "img").mkdir()
  (tmp_path / "img" / "r.png").write_bytes(png)
  path = tmp_path / "l.json"
  turns = GOOD[0]["conversations"]
  path.write_text(json.dumps([{"id": "r", "image": "r.png", "conversations": turns}]))
  ex = sources.LlavaJsonSource(str(path), image_dir=str(tmp_path / "img"))[0]
  np.testing.assert_array_equal(ex["image"][..., 2], (ramp >> 8).astype(np.uint8))


def test_llava_malformed_fields_are_one_line_errors(tmp_path):
  """A non-string role and an image path with a NUL byte used to escape as TypeError / ValueError."""
  turns = GOOD[0]["conversations"]
  path = _write_llava(tmp_path, [
      {"id": "u0", "conversations": [{"from": ["human"], "value": "hi"}]},
      {"id": "n1", "image": "coco/a\u0000b.jpg", "conversations": turns},
      {"id": "w2", "image": "coco/with\nnewline.jpg", "conversations": turns},
  ])
  src = sources.LlavaJsonSource(path, image_dir=str(tmp_path / "images"))
  for index, rid, problem in [(0, "u0", "unknown role ['human']"), (1, "n1", "embedded null byte"),
                              (2, "w2", "No such file")]:
    with pytest.raises(sources.DataError) as err:
      src[index]
    assert_one_line(err.value, path, f"record {index}", rid, problem)
  lenient = sources.LlavaJsonSource(path, image_dir=str(tmp_path / "images"), on_error="skip")
  with pytest.raises(sources.DataError, match="all 3 records are corrupt"):
    lenient[0]
