"""The `hf` GenEval detector's plumbing on random tiny weights (Mask2Former + CLIP saved to a
temporary directory and loaded back locally): detections in the `geneval.Detector` format, colours
from the 10 GenEval names, batching equal to one-by-one, and clear errors for missing weights."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxmodels.evals import EvalInputError, geneval  # noqa: E402
from jaxmodels.evals.detectors import make_detector  # noqa: E402
from jaxmodels.evals.hf_detector import COLORS, HFDetector, mask_box  # noqa: E402

CLASSES = ("person", "cow", "dining table")


def _save_tiny_weights(root):
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import (CLIPConfig, CLIPModel, Mask2FormerConfig,
                            Mask2FormerForUniversalSegmentation, PreTrainedTokenizerFast,
                            SwinConfig)
  torch.manual_seed(0)
  swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                    num_heads=[1, 1, 2, 2], window_size=2, drop_path_rate=0.0,
                    out_features=["stage1", "stage2", "stage3", "stage4"])
  m2f = Mask2FormerConfig(backbone_config=swin, hidden_dim=32, feature_size=32,
                          mask_feature_size=32, encoder_layers=1, decoder_layers=2,
                          num_queries=6, encoder_feedforward_dim=32, dim_feedforward=32,
                          num_attention_heads=2, use_pretrained_backbone=False,
                          id2label=dict(enumerate(CLASSES)),
                          label2id={c: i for i, c in enumerate(CLASSES)})
  Mask2FormerForUniversalSegmentation(m2f).save_pretrained(root / "m2f")
  words = sorted({w for c in COLORS for w in (c, f"{c}-colored")} | set(" ".join(CLASSES).split())
                 | {"a", "photo", "of", "object", "-", "colored"})
  vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
  clip = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     max_position_embeddings=16, eos_token_id=1),
                    vision_config=dict(image_size=32, patch_size=8, hidden_size=16,
                                       intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2),
                    projection_dim=8)
  CLIPModel(clip).save_pretrained(root / "clip")
  fast.save_pretrained(root / "clip")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
  """Tiny models on a shared 2-core machine: one torch thread is ~50x faster than two."""
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(before)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf_weights")
  _save_tiny_weights(root)
  return HFDetector(root / "m2f", root / "clip", short_side=64, long_side=96,
                    color_min_score=0.0, batch_size=2)


def _images():
  rng = np.random.default_rng(0)
  a = np.full((48, 64, 3), 153, np.uint8)
  a[10:30, 8:28] = (220, 30, 30)
  b = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
  c = np.full((40, 40, 3), 153, np.uint8)   # another size: padded with the batch
  return [a, b, c]


def test_detections_follow_the_detector_interface(detector):
  for image, dets in zip(_images(), detector.detect_batch(_images())):
    assert dets, "random weights still yield instances"
    scores = [d["score"] for d in dets]
    assert scores == sorted(scores, reverse=True)
    h, w = image.shape[:2]
    for d in dets:
      assert set(d) == {"class", "box", "score", "color"}
      assert d["class"] in CLASSES and 0.0 <= d["score"] <= 1.0
      x1, y1, x2, y2 = d["box"]
      assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
      assert d["color"] in COLORS   # color_min_score=0: every detection is classified
    # The shared rules run on them unchanged.
    ok, reason = geneval.evaluate_detections(
        {"tag": "single_object", "include": [{"class": "cow", "count": 1}]}, dets)
    assert isinstance(ok, bool) and isinstance(reason, str)


def test_batched_equals_one_by_one(detector):
  images = _images()[:2]   # same size: the same padding in a batch as alone
  batched = detector.detect_batch(images)
  for image, dets in zip(images, batched):
    single = detector.detect(image)
    assert [d["class"] for d in single] == [d["class"] for d in dets]
    assert [d["box"] for d in single] == [d["box"] for d in dets]
    np.testing.assert_allclose([d["score"] for d in single], [d["score"] for d in dets],
                               atol=1e-5)


def test_colour_threshold_leaves_low_scores_unclassified(detector):
  detector.color_min_score, old = 2.0, detector.color_min_score
  try:
    assert all(d["color"] is None for d in detector.detect(_images()[0]))
  finally:
    detector.color_min_score = old


def test_make_detector_and_missing_weights(tmp_path, detector):
  with pytest.raises(EvalInputError, match="config.json missing"):
    make_detector("hf", detector_dir=tmp_path / "nope", clip_dir=tmp_path)
  with pytest.raises(EvalInputError, match="unknown detector"):
    make_detector("mmdet")


def test_mask_box():
  m = np.zeros((5, 6), bool)
  m[1:3, 2:5] = True
  assert mask_box(m) == [2, 1, 5, 3] and mask_box(np.zeros((2, 2), bool)) is None


def test_scores_a_geneval_folder_in_batches(detector, tmp_path):
  import json

  from jaxmodels import shapes_world as sw
  records = []
  for i in range(3):
    ex = sw.generate_example("test", i, num_examples=553, image_size=64)
    records.append(ex.record)
    geneval.write_prompt_images(tmp_path / "images", i, ex.record, [ex.rendering.image])
  (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  calls = []
  original = detector.detect_batch
  detector.detect_batch = lambda images: calls.append(len(images)) or original(images)
  try:
    out = geneval.score_folder(tmp_path / "images", tmp_path / "prompts.jsonl", detector,
                               images_per_prompt=1, progress=False, out_dir=tmp_path / "scores")
  finally:
    del detector.detect_batch
  assert calls == [2, 1] and len(out["results"]) == 3
  assert (tmp_path / "scores" / "results.jsonl").read_text().count("\n") == 3
