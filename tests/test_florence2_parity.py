"""Florence-2 (DaViT + image projection + BART encoder/decoder) against transformers'
`Florence2ForConditionalGeneration` on a random tiny config (all parameters perturbed), f32, atol 1e-4."""
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxmodels import hf  # noqa: E402
from jaxmodels.unified.dbfusion import DBFusion, DBFusionConfig  # noqa: E402
from oracles import nchw, perturb_, save_tiny  # noqa: E402

IMAGE_TOKEN = 99
VISION = dict(depths=[1, 1, 2, 1], embed_dim=[8, 16, 24, 32], num_heads=[1, 2, 2, 4], num_groups=[1, 2, 2, 4],
              window_size=3, projection_dim=32, max_position_embeddings=20, max_temporal_embeddings=10)
TEXT = dict(model_type="bart", vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
            max_position_embeddings=64)
# 160 px -> a 5×5 DaViT map: the 3×3 windows need padding, so that path is covered too.
SIDE = 160
PROMPTS = ((0, 11, 12, 13, 14, 2), (0, 21, 22, 2), (0, 31, 32, 33, 2))   # 3 prompts of different lengths


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
  config = transformers.Florence2Config(vision_config=VISION, text_config=TEXT, image_token_id=IMAGE_TOKEN)
  model = perturb_(transformers.Florence2ForConditionalGeneration(config).eval(), 0.05)
  return model, save_tiny(model, tmp_path_factory.mktemp("florence2"))


def _inputs():
  rs = np.random.RandomState(0)
  images = rs.uniform(-2, 2, (2, SIDE, SIDE, 3)).astype(np.float32)
  n = 1 + (SIDE // 32) ** 2
  length = max(map(len, PROMPTS))
  # 2 images × 3 prompts, prompt-major rows (as DBFusion batches them), right-padded with pad id 1.
  ids = np.array([[IMAGE_TOKEN] * n + list(p) + [1] * (length - len(p)) for p in PROMPTS for _ in range(2)])
  mask = np.array([[1] * (n + len(p)) + [0] * (length - len(p)) for p in PROMPTS for _ in range(2)])
  return images, np.tile(images, (3, 1, 1, 1)), ids, mask


# scan_layers=True only (the loop layout loads through the same key map; compiling both doubles the
# test time on CPU). The per-layer names are checked by loading every tensor either way.
@pytest.mark.parametrize("scan", [True])
def test_vision_and_encoder_match_transformers(oracle, scan):
  model, path = oracle
  images, rows, ids, mask = _inputs()
  dec = np.random.RandomState(1).randint(3, 90, (6, 4))
  with torch.no_grad():
    fmap = model.model.vision_tower(nchw(images)).last_hidden_state.permute(0, 2, 3, 1).numpy()
    feats = model.model.get_image_features(nchw(images)).pooler_output.numpy()
    ref = model(input_ids=torch.tensor(ids), pixel_values=nchw(rows), attention_mask=torch.tensor(mask),
                decoder_input_ids=torch.tensor(dec))
  ours = hf.from_pretrained(path, scan_layers=scan)
  loop = hf.from_pretrained(path, scan_layers=False)          # the loop layout loads every tensor too
  np.testing.assert_array_equal(loop.encoder.blocks[1].fc1.kernel[...], ours.encoder.blocks.fc1.kernel[1])
  assert fmap.shape == (2, 5, 5, 32)
  run = nnx.jit(lambda m, x, i, k, r, d: (m.vision_tower(x), m.image_features(x), m.encode(i, k, r),
                                          m(i, k, r, d)))
  out_map, out_feats, enc, logits = run(ours, jnp.asarray(images), jnp.asarray(ids), jnp.asarray(mask),
                                        jnp.asarray(rows), jnp.asarray(dec))
  np.testing.assert_allclose(out_map, fmap, atol=1e-4)
  np.testing.assert_allclose(out_feats, feats, atol=1e-4)
  ref_enc = ref.encoder_last_hidden_state.numpy()
  assert enc.shape == ref_enc.shape == (6, 26 + 6, 32)
  # Padding rows' own outputs are compared too: HF masks padding only as keys, as we do.
  np.testing.assert_allclose(enc, ref_enc, atol=1e-4)
  np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4)


def test_dbfusion_streams_are_the_encoder_states_at_the_image_slots(oracle):
  model, path = oracle
  images, rows, ids, mask = _inputs()
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), pixel_values=nchw(rows), attention_mask=torch.tensor(mask))
    feats = model.model.get_image_features(nchw(images)).pooler_output.numpy()
  ref_enc = ref.encoder_last_hidden_state.numpy()
  florence = hf.from_pretrained(path, decoder=False)
  config = DBFusionConfig(florence=florence.config, out_dim=16, image_size=SIDE, prompt_ids=PROMPTS)
  fusion = DBFusion(config, rngs=nnx.Rngs(0), florence=florence)
  streams = nnx.jit(lambda f, x: f.streams(x))(fusion, jnp.asarray(images))
  assert len(streams) == 4 and all(s.shape == (2, 25, 32) for s in streams)
  np.testing.assert_allclose(streams[0], feats[:, 1:], atol=1e-4)           # depth: global token dropped
  for k in range(3):
    np.testing.assert_allclose(streams[1 + k], ref_enc[2 * k:2 * k + 2, 1:26], atol=1e-4)
