"""`jaxmodels.unified.from_pretrained` on tiny random replicas of the four released layouts.

Each replica is a directory with the release's file names, config keys and tensor names (see the
layout files in jaxmodels/unified/released/), its parts built where transformers / diffusers have the
class (Qwen2 / Qwen3 / Phi-3 LMs, SigLIP, the Qwen2.5-VL vision tower, Florence-2, SANA, DC-AE,
Lumina-Next) and saved under the release's prefixes; the paper-specific parts (connectors, queries,
TA-Tok's quantiser) are random tensors with the release's names and shapes. Checked: tensors land
where they should (stored arrays vs loaded ones, after the known transposes and row orders), the LM's
logits match the transformers model, the paper's forward runs, and bad inputs fail in one line."""
import json
import os
import re
import shutil

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")
import torch  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxmodels.errors import CheckpointFormatError  # noqa: E402
from jaxmodels.hf.safetensors_io import SafetensorsReader, read_config, write_checkpoint  # noqa: E402
from jaxmodels.unified import from_pretrained  # noqa: E402
from jaxmodels.unified.model import splice_image_tokens  # noqa: E402
from jaxmodels.unified.released import florence_vl as florence_layout  # noqa: E402
from jaxmodels.unified.released.common import regex_renamer  # noqa: E402
from oracles import nchw, perturb_, torch_logits  # noqa: E402
from test_florence2_parity import TEXT as FLORENCE2_TEXT, VISION as FLORENCE2_VISION  # noqa: E402
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (  # noqa: E402
    Qwen2_5_VisionTransformerPretrainedModel as VisionTower)

ATOL = 1e-4
SANA = dict(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8, num_layers=1,
            num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
            caption_channels=24, sample_size=4, mlp_ratio=2.5)
DCAE = dict(latent_channels=8, attention_head_dim=8, encoder_block_types=("ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 16),
            decoder_block_out_channels=(8, 16), encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
            encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
            downsample_block_type="Conv", upsample_block_type="interpolate", scaling_factor=0.41407)
SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8, vision_use_head=False)


def _np(module, prefix=""):
  return {prefix + k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _rand(rs, *shape, scale=0.1):
  return (rs.randn(*shape) * scale).astype(np.float32)


def _ids(vocab, b=2, t=5, seed=0):
  ids = np.random.RandomState(seed).randint(0, vocab, (b, t)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :2] = 0                                     # a left-padded row
  return ids, mask


@nnx.jit
def _logits(llm, ids, mask):
  return llm(ids, attention_mask=mask)


def _check_logits(model, oracle, vocab, order=None):
  ids, mask = _ids(vocab)
  ours = np.asarray(_logits(model.llm, jnp.asarray(ids), jnp.asarray(mask)))
  ref = torch_logits(oracle, ids.astype(np.int64), mask.astype(np.int64))
  ref = ref if order is None else ref[..., order]
  keep = mask.astype(bool)                            # padded positions' outputs are not meaningful
  np.testing.assert_allclose(ours[keep], ref[keep], atol=ATOL)


@pytest.fixture(scope="module")
def sana_pipeline(tmp_path_factory):
  """A SANA diffusers pipeline folder (transformer/ + vae/ configs) and its two modules."""
  torch.manual_seed(0)
  sana = perturb_(diffusers.SanaTransformer2DModel(**SANA).eval(), 0.05)
  vae = perturb_(diffusers.AutoencoderDC(**DCAE).eval(), 0.05, seed=1)
  path = tmp_path_factory.mktemp("sana_pipeline")
  sana.save_config(str(path / "transformer"))
  vae.save_config(str(path / "vae"))
  return str(path), sana, vae


# ---------------------------------------------------------------------------------------------- MetaQuery
MQ_N, MQ_TEXT_VOCAB = 4, 120


MQ_TEXT = dict(model_type="qwen2", vocab_size=MQ_TEXT_VOCAB, hidden_size=128, intermediate_size=128,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
               rms_norm_eps=1e-6, tie_word_embeddings=True)     # eps explicit: Qwen2.5-VL's default differs


def _connector_tensors(rs, prefix="model.connector."):
  """The release's Enc-Proj connector: one Qwen2Encoder layer (2 heads of 64), Linear, Linear, RMSNorm."""
  layer, t = prefix + "0.layers.0.", {}
  for p in ("q", "k", "v", "o"):
    t[f"{layer}self_attn.{p}_proj.weight"] = _rand(rs, 128, 128)
    if p != "o":
      t[f"{layer}self_attn.{p}_proj.bias"] = _rand(rs, 128)
  t.update({layer + "input_layernorm.weight": 1 + _rand(rs, 128),
            layer + "post_attention_layernorm.weight": 1 + _rand(rs, 128),
            layer + "self_attn.q_norm.gamma": 1 + _rand(rs, 2, 1, 64),
            layer + "self_attn.k_norm.gamma": 1 + _rand(rs, 2, 1, 64),
            layer + "mlp.gate_proj.weight": _rand(rs, 512, 128), layer + "mlp.up_proj.weight": _rand(rs, 512, 128),
            layer + "mlp.down_proj.weight": _rand(rs, 128, 512),
            prefix + "1.weight": _rand(rs, 24, 128), prefix + "1.bias": _rand(rs, 24),
            prefix + "3.weight": _rand(rs, 24, 24), prefix + "3.bias": _rand(rs, 24),
            prefix + "4.weight": np.full(24, 5.5 ** 0.5, np.float32)})
  return t


def _metaquery_replica(tmp_path_factory, sana_pipeline, backbone):
  """A MetaQuery checkpoint on a tiny base MLLM ("llavaov": MetaQuery-B's LLaVA-OneVision = Qwen2 +
  SigLIP + projector; "qwenvl": MetaQuery-L/XL's Qwen2.5-VL), 4 queries, a 1-layer connector, SANA and
  DC-AE, in transformers 4.49 names. Returns (path, tensors, the Qwen2 oracle)."""
  pipe, sana, vae = sana_pipeline
  torch.manual_seed(0)
  rs = np.random.RandomState(0)
  bb = "model.mllm_backbone."
  base = tmp_path_factory.mktemp(backbone)
  llm = perturb_(transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**MQ_TEXT)).eval(), 0.05)
  if backbone == "llavaov":
    base_config = transformers.LlavaOnevisionConfig(text_config=MQ_TEXT, vision_config=dict(
        model_type="siglip_vision_model", **SIGLIP), image_token_index=MQ_TEXT_VOCAB - 1)
    tower = perturb_(transformers.SiglipVisionModel(base_config.vision_config).eval(), 0.05, seed=2)
    llm_prefix, tensors = bb + "language_model.", _np(tower, bb + "vision_tower.vision_model.")
    tensors.update({bb + "multi_modal_projector.linear_1.weight": _rand(rs, 128, 32),
                    bb + "multi_modal_projector.linear_1.bias": _rand(rs, 128),
                    bb + "multi_modal_projector.linear_2.weight": _rand(rs, 128, 128),
                    bb + "multi_modal_projector.linear_2.bias": _rand(rs, 128),
                    bb + "image_newline": _rand(rs, 128)})
  else:
    text = dict(MQ_TEXT, rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[4, 6, 6]))
    base_config = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=dict(
        B3_VISION, out_hidden_size=128), image_token_id=MQ_TEXT_VOCAB - 1)
    tower = perturb_(VisionTower(base_config.vision_config).eval(), 0.05, seed=2)
    llm_prefix, tensors = bb, _np(tower, bb + "visual.")
  base_config.save_pretrained(str(base))
  tensors.update({k: v for k, v in _np(llm, llm_prefix).items() if "lm_head" not in k})   # lm_head: identity
  embed = llm_prefix + "model.embed_tokens.weight"
  tensors[embed] = np.concatenate([tensors[embed], _rand(rs, MQ_N + 2, 128)])   # <boi>, <eoi>, <img0..3>
  tensors.update(_connector_tensors(rs))
  tensors.update(_np(sana, "model.transformer."))
  tensors.update(_np(vae, "vae."))
  config = dict(model_type="metaquery", architectures=["MetaQuery"], mllm_id=str(base), diffusion_model_id=pipe,
                vae_id=pipe, num_metaqueries=MQ_N, connector_num_hidden_layers=1, input_size=4, in_channels=8,
                vae_downsample_f=2, loss_type="flow", max_input_text_tokens=256,
                system_prompt="You will be given an image or its caption.")
  path = str(tmp_path_factory.mktemp(f"metaquery_{backbone}"))
  write_checkpoint(path, config, tensors, max_shard_bytes=400_000)          # sharded, with an index
  return path, tensors, llm


@pytest.fixture(scope="module")
def metaquery(tmp_path_factory, sana_pipeline):
  path, tensors, llm = _metaquery_replica(tmp_path_factory, sana_pipeline, "llavaov")
  return path, tensors, llm, from_pretrained(path)


def test_metaquery_tensors_land_and_the_lm_matches(metaquery):
  path, tensors, oracle, r = metaquery
  assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
  m, v = r.model, MQ_TEXT_VOCAB
  assert (r.kind, r.can_generate, r.can_answer, r.can_edit) == ("metaquery", True, True, True)
  assert r.system_prompt == "You will be given an image or its caption." and r.prompt_suffix == "\n"
  stored = tensors["model.mllm_backbone.language_model.model.embed_tokens.weight"]
  np.testing.assert_array_equal(m.llm.embed.embedding[...], stored[:v])
  q = np.asarray(m.query_embed[...])          # ours [img0..3, boi, eoi]; stored [boi, eoi, img0..3]
  np.testing.assert_array_equal(q[:MQ_N], stored[v + 2:])
  np.testing.assert_array_equal(q[MQ_N:], stored[v:v + 2])
  layer = m.connector.encoder.layers[0]
  np.testing.assert_array_equal(layer.q_gamma[...],
                                tensors["model.connector.0.layers.0.self_attn.q_norm.gamma"][:, 0])
  np.testing.assert_array_equal(layer.q.kernel[...].reshape(128, 128),
                                tensors["model.connector.0.layers.0.self_attn.q_proj.weight"].T)
  np.testing.assert_array_equal(m.connector.proj.fc1.kernel[...], tensors["model.connector.1.weight"].T)
  np.testing.assert_array_equal(m.und_projector.fc1.kernel[...],
                                tensors["model.mllm_backbone.multi_modal_projector.linear_1.weight"].T)
  assert "model.mllm_backbone.image_newline.*" in r.unused
  _check_logits(m, oracle, v)


def test_metaquery_generates_images(metaquery):
  *_, r = metaquery
  s = r.sampling
  assert (s["solver"], s["shift"], s["guidance"]) == ("dpm++2m", 3.0, 7.5)
  ids, mask = _ids(MQ_TEXT_VOCAB, seed=1)
  run = nnx.jit(lambda m, i, k, key: m.generate_image(i, k, key, num_steps=2, guidance=s["guidance"],
                                                        solver=s["solver"], shift=s["shift"]))
  images = np.asarray(run(r.model, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0)))
  assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all() and np.abs(images).max() <= 1.0
  assert r.generates_pixels


def test_metaquery_on_qwen2_5_vl_loads_its_tower_and_lm(tmp_path_factory, sana_pipeline):
  """MetaQuery-L / -XL's backbone: Qwen2.5-VL's tower under visual.*, its LM under model.* (tied head)."""
  path, tensors, oracle = _metaquery_replica(tmp_path_factory, sana_pipeline, "qwenvl")
  r = from_pretrained(path)
  m = r.model
  assert r.can_answer and m.und_projector is None and m.config.und_encoder.image_size == 448
  assert r.answer_template.startswith("<|vision_start|><image>")
  np.testing.assert_array_equal(m.und_encoder.merger.mlp.fc2.kernel[...],
                                tensors["model.mllm_backbone.visual.merger.mlp.2.weight"].T)
  np.testing.assert_array_equal(m.query_embed[...][MQ_N],
                                tensors["model.mllm_backbone.model.embed_tokens.weight"][MQ_TEXT_VOCAB])
  _check_logits(m, oracle, MQ_TEXT_VOCAB)
  _check_qwen_vl_answers(path, tensors, m)


def _check_qwen_vl_answers(path, tensors, m):
  """An image + question prompt through the released model's understanding path (the Qwen2.5-VL tower's
  tokens spliced in, M-RoPE positions, `model.answer` with the KV cache) against transformers'
  Qwen2_5_VLForConditionalGeneration holding the same backbone weights: last-token logits of a batch
  with a left-padded row, and greedy answers."""
  from jaxmodels.unified.encoders import encoder_pixels
  from jaxmodels.vision.qwen2_5_vl import images_to_patches
  start, end, image = 5, 6, m.config.image_token_id
  base = transformers.Qwen2_5_VLConfig.from_pretrained(read_config(path)["mllm_id"])
  base.vision_start_token_id, base.vision_end_token_id = start, end
  hf = transformers.Qwen2_5_VLForConditionalGeneration(base).eval()
  bb, state = "model.mllm_backbone.", {}
  for k, v in tensors.items():
    for ours, theirs in (("visual.", "model.visual."), ("model.", "model.language_model.")):
      if k.startswith(bb + ours):
        state[theirs + k[len(bb + ours):]] = torch.tensor(v)
  emb = "model.language_model.embed_tokens.weight"
  state[emb] = state[emb][:MQ_TEXT_VOCAB]                  # without MetaQuery's added query rows
  missing, unexpected = hf.load_state_dict(state, strict=False)
  assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
  hf.tie_weights()
  n = m.num_image_tokens
  rows = [[3, 4, start] + [image] * n + [end, 7, 8, 9], [0, 0, start] + [image] * n + [end, 9, 10, 11]]
  ids = np.array(rows, np.int64)
  mask = np.ones_like(ids)
  mask[1, :2] = 0
  images = np.random.RandomState(5).uniform(-1, 1, (2, 448, 448, 3)).astype(np.float32)
  patches, grid = images_to_patches(encoder_pixels(m.config.und_encoder, jnp.asarray(images)), m.config.und_encoder)
  inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                pixel_values=torch.tensor(np.asarray(patches)), image_grid_thw=torch.tensor(np.asarray(grid)),
                mm_token_type_ids=torch.tensor((ids == image).astype(np.int64)))
  with torch.no_grad():
    want = hf(**inputs).logits[:, -1].numpy()
    want_tokens = hf.generate(**inputs, max_new_tokens=3, do_sample=False)[:, ids.shape[1]:].numpy()
  jids, jmask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
  positions = m.answer_positions(jids, jmask)
  assert positions.shape == (3, 2, ids.shape[1])
  logits = m.llm(None, positions, jmask, inputs_embeds=m.und_embeddings(jids, jnp.asarray(images)))[:, -1]
  np.testing.assert_allclose(np.asarray(logits)[:, :MQ_TEXT_VOCAB], want, atol=ATOL)
  got = m.answer(jnp.asarray(images), jids, jmask, 3, eos_token_id=[], pad_token_id=0)
  np.testing.assert_array_equal(np.asarray(got), want_tokens)


# -------------------------------------------------------------------------------------------- BLIP3o-NEXT
NX_V0, NX_CODES = 96, 16
NX_VOCAB = NX_V0 + 2 + 3 + NX_CODES               # text, <im_start>, <im_end>, <S0..2>, <I0..15>


@pytest.fixture(scope="module")
def blip3o_next(tmp_path_factory, sana_pipeline):
  pipe, sana, vae = sana_pipeline
  torch.manual_seed(0)
  qwen3 = transformers.Qwen3Config(vocab_size=NX_VOCAB, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=128, tie_word_embeddings=False)
  llm = perturb_(transformers.Qwen3ForCausalLM(qwen3).eval(), 0.05)
  siglip = transformers.SiglipVisionConfig(**SIGLIP)
  ta_tok = tmp_path_factory.mktemp("ta_tok_encoder")
  siglip.save_pretrained(str(ta_tok))
  encoder = perturb_(transformers.SiglipVisionModel(siglip).eval(), 0.05, seed=2)
  rs = np.random.RandomState(1)
  tok = "model.vision_tower.vision_tower."
  tensors = _np(llm)
  tensors.update(_np(encoder, tok + "encoder."))             # TA-Tok holds SigLIP's vision_model as `encoder`
  tensors.update({tok + "encode_task_layer.0.weight": _rand(rs, 32, 32),
                  tok + "encode_task_layer.0.bias": _rand(rs, 32),
                  tok + "bottleneck.in_linear.weight": _rand(rs, 8, 32),
                  tok + "bottleneck.in_linear.bias": _rand(rs, 8),
                  tok + "bottleneck.regularizer.embedding.weight": _rand(rs, NX_CODES, 8, scale=1.0),
                  tok + "bottleneck.regularizer.embedding_proj.weight": _rand(rs, 8, 8, scale=0.5),
                  tok + "bottleneck.regularizer.embedding_proj.bias": _rand(rs, 8),
                  tok + "bottleneck.out_linear.weight": _rand(rs, 32, 8),        # TA-Tok's decoder side
                  tok + "decoder.vision_model.post_layernorm.weight": _rand(rs, 32),
                  "model.diffusion_connector.0.weight": _rand(rs, 24, 64),
                  "model.diffusion_connector.0.bias": _rand(rs, 24),
                  "model.diffusion_connector.2.weight": _rand(rs, 24, 24),
                  "model.diffusion_connector.2.bias": _rand(rs, 24),
                  "model.diffusion_connector.3.weight": np.full(24, 5.5 ** 0.5, np.float32)})
  tensors.update(_np(sana, "model.sana."))
  tensors.update(_np(vae, "model.sana_vae."))
  config = dict(qwen3.to_dict(), model_type="blip3o_qwen", architectures=["blip3oQwenForCausalLM"],
                mm_vision_tower=str(ta_tok), diffusion_name_or_path=pipe, image_start_tag_id=NX_V0,
                image_end_tag_id=NX_V0 + 1, scale_start_token_id=NX_V0 + 2, scale_end_token_id=NX_V0 + 4,
                num_scale_tokens=3, image_start_token_id=NX_V0 + 5, image_end_token_id=NX_VOCAB - 1,
                num_image_tokens=NX_CODES, mm_use_im_start_end=True, tokenizer_padding_side="left")
  path = str(tmp_path_factory.mktemp("blip3o_next"))
  write_checkpoint(path, config, tensors)
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "Qwen2Tokenizer"}, f)
  return path, tensors, llm, from_pretrained(path)


def _next_order():
  return (list(range(NX_V0)) + list(range(NX_V0 + 5, NX_VOCAB)) + [NX_V0 + 2, NX_V0 + 3, NX_V0 + 4]
          + [NX_V0, NX_V0 + 1])


def test_blip3o_next_tensors_land_and_the_lm_matches(blip3o_next):
  path, tensors, oracle, r = blip3o_next
  m, order = r.model, _next_order()
  assert (r.kind, r.can_generate, r.can_answer, r.can_edit) == ("blip3o_next", True, False, False)
  assert r.tokenizer_dir == path and r.prompt_template.startswith("Please generate image based on")
  assert m.config.image_vocab_offset == NX_V0 and m.config.image_tokenizer.code_dim == 8
  np.testing.assert_array_equal(m.llm.embed.embedding[...], tensors["model.embed_tokens.weight"][order])
  np.testing.assert_array_equal(m.llm.lm_head.kernel[...], tensors["lm_head.weight"][order].T)
  tok = "model.vision_tower.vision_tower."
  t = m.image_tokenizer
  np.testing.assert_array_equal(t.codebook[...], tensors[tok + "bottleneck.regularizer.embedding.weight"])
  np.testing.assert_array_equal(t.codebook_proj.bias[...],
                                tensors[tok + "bottleneck.regularizer.embedding_proj.bias"])
  np.testing.assert_array_equal(t.bottleneck.kernel[...], tensors[tok + "bottleneck.in_linear.weight"].T)
  np.testing.assert_array_equal(m.connector.proj.norm.scale[...], tensors["model.diffusion_connector.3.weight"])
  assert {tok + "bottleneck.out_linear.*", tok + "decoder.vision_model.post_layernorm.*"} <= set(r.unused)
  _check_logits(m, oracle, NX_V0, order)


def test_blip3o_next_generates_images(blip3o_next):
  *_, r = blip3o_next
  ids, mask = _ids(NX_V0, seed=2)
  run = nnx.jit(lambda m, i, k, key: m.generate_image(i, k, key, num_steps=2, guidance=2.0, return_codes=True))
  images, codes = run(r.model, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0))
  assert images.shape == (2, 8, 8, 3) and np.isfinite(np.asarray(images)).all()
  assert codes.shape == (2, 16) and (np.asarray(codes) >= 0).all() and (np.asarray(codes) < NX_CODES).all()


# ------------------------------------------------------------------------------------------------ BLIP3-o
B3_VOCAB = 128
B3_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4, window_size=16,
                 fullatt_block_indexes=[1], out_hidden_size=64, spatial_merge_size=2, temporal_patch_size=2)
B3_UNET = dict(sample_size=4, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
               norm_num_groups=4, cross_attention_dim=16, transformer_layers_per_block=(1, 1),
               attention_head_dim=(1, 2), use_linear_projection=True, addition_embed_type="text_time",
               addition_time_embed_dim=4, projection_class_embeddings_input_dim=16 + 6 * 4)
B3_VAE = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
              block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=8)
B3_DIT = dict(sample_size=8, patch_size=1, in_channels=16, hidden_size=32, num_layers=2, num_attention_heads=2,
              num_kv_heads=2, multiple_of=16, learn_sigma=False, cross_attention_dim=32)


@pytest.fixture(scope="module")
def blip3o(tmp_path_factory):
  """BLIP3-o: Qwen2.5-VL (tiny Qwen2 LM + vision tower), 4 latent queries, NextDiT-CrossAttn, and a
  diffusion-decoder/ pipeline folder; sharded safetensors plus the release's pickle adapters."""
  torch.manual_seed(0)
  text = transformers.Qwen2Config(vocab_size=B3_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                  tie_word_embeddings=False)
  llm = perturb_(transformers.Qwen2ForCausalLM(text).eval(), 0.05)
  vision_config = transformers.Qwen2_5_VLVisionConfig(**B3_VISION)
  tower = perturb_(VisionTower(vision_config).eval(), 0.05, seed=2)
  dit = perturb_(diffusers.LuminaNextDiT2DModel(**B3_DIT).eval(), 0.05, seed=3)
  proj = perturb_(diffusers.models.embeddings.PixArtAlphaTextProjection(64, 32), 0.05, seed=4)
  rs = np.random.RandomState(2)
  tensors = _np(llm)
  tensors.update(_np(tower, "visual."))
  tensors.update({k: v for k, v in _np(dit, "model.dit.model.").items() if not k.endswith("pad_token")})
  tensors.update(_np(proj, "model.dit.model.caption_projection."))
  tensors["model.latent_queries"] = _rand(rs, 1, 4, 64, scale=1.0)
  config = dict(text.to_dict(), model_type="blip3o_qwen", architectures=["blip3oQwenForCausalLM"],
                vision_config=dict(vision_config.to_dict(), in_chans=3),
                rope_scaling={"type": "default", "mrope_section": [2, 3, 3], "rope_type": "default"},
                n_query=4, gen_vision_tower="eva-clip-E-14-plus", gen_pooling="early_pool2d_4")
  path = str(tmp_path_factory.mktemp("blip3o"))
  write_checkpoint(path, config, tensors, max_shard_bytes=300_000)
  for name in ("mm_projector.bin", "gen_projector.bin"):      # never opened
    with open(os.path.join(path, name), "wb") as f:
      f.write(b"not a pickle to open")
  decoder = os.path.join(path, "diffusion-decoder")     # an SDXL-style UNet + VAE on the 16-d features
  unet = perturb_(diffusers.UNet2DConditionModel(**B3_UNET).eval(), 0.05, seed=5)
  vae = perturb_(diffusers.AutoencoderKL(**B3_VAE).eval(), 0.05, seed=6)
  unet.save_pretrained(os.path.join(decoder, "unet"), variant="bf16")   # the release's variant file names
  vae.save_pretrained(os.path.join(decoder, "vae"), variant="bf16")
  with open(os.path.join(decoder, "model_index.json"), "w") as f:
    json.dump({"_class_name": "DiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"]}, f)
  return path, tensors, llm, from_pretrained(path)


def test_blip3o_tensors_land_and_the_lm_matches(blip3o):
  path, tensors, oracle, r = blip3o
  m = r.model
  assert (r.kind, r.can_generate, r.can_answer, r.can_edit) == ("blip3o", True, True, False)
  assert r.prompt_suffix == "[IMG]" and r.generates_pixels
  assert r.pixel_decoder_dir == os.path.join(path, "diffusion-decoder")
  np.testing.assert_array_equal(m.queries[...], tensors["model.latent_queries"][0])
  assert m.config.dit.ffn_hidden_size == tensors["model.dit.model.layers.0.feed_forward.linear_1.weight"].shape[0]
  np.testing.assert_array_equal(m.dit.caption_projection.linear_1.kernel[...],
                                tensors["model.dit.model.caption_projection.linear_1.weight"].T)
  np.testing.assert_array_equal(m.und_encoder.merger.mlp.fc1.kernel[...], tensors["visual.merger.mlp.0.weight"].T)
  _check_logits(m, oracle, B3_VOCAB)


def test_blip3o_generates_clip_features(blip3o):
  *_, r = blip3o
  ids, mask = _ids(B3_VOCAB, seed=3)
  run = nnx.jit(lambda m, i, k, key: m.generate_image(i, k, key, num_steps=2, guidance=3.0))
  feats = np.asarray(run(r.model, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0)))
  assert feats.shape == (2, 8, 8, 16) and np.isfinite(feats).all()
  # ... which the diffusion-decoder/ folder renders (64 tokens in row-major order, CFG against null ones)
  from jaxmodels.unified.pixel_decoder import SDXLFeatureDecoder
  dec = r.pixel_decoder
  assert isinstance(dec, SDXLFeatureDecoder)
  np.testing.assert_array_equal(np.asarray(dec.unet.conv_in.kernel[...]).shape, (3, 3, 4, 8))
  tokens = jnp.asarray(feats.reshape(2, 64, 16))
  assert dec.image_size == 8                      # the UNet's sample_size × the VAE's downsampling
  images = nnx.jit(lambda d, f, k: d.decode(f, jnp.zeros_like(f[:1]), k, num_steps=2, guidance=3.0))(
      dec, tokens, jax.random.key(1))
  assert images.shape == (2, 8, 8, 3) and np.isfinite(np.asarray(images)).all()


def test_sample_py_draws_with_the_blip3o_release(blip3o, tmp_path):
  """sample.py's path for a released directory: `open_model` recognises the layout, the prompt goes
  through the tokenizer's chat template with BLIP3-o's system prompt, template and [IMG] suffix, the DiT
  generates the CLIP features and diffusion-decoder/ renders them into the PNGs sample.py writes."""
  import shutil

  import sample
  from jaxmodels.serving.offline import ReleasedModelRunner, open_model
  from oracles import write_word_tokenizer
  path = str(tmp_path / "BLIP3o-Model-tiny")
  shutil.copytree(blip3o[0], path)
  template = open(os.path.join(os.path.dirname(__file__), "data", "chat_templates",
                               "Qwen-Qwen2.5-VL-7B-Instruct.jinja")).read()
  words = ("system user assistant You are a helpful Please generate image based on the following caption : "
           "red circle").split()
  write_word_tokenizer(path, words, specials=("<|im_start|>", "<|im_end|>", "[IMG]"), chat_template=template)
  model = open_model(path)
  assert isinstance(model, ReleasedModelRunner) and model.generates and model.default_steps == 30
  ids = model._prompt_ids("a red circle")
  assert ids[-1] == model.tok.token_to_id("[IMG]") and max(ids) < B3_VOCAB
  tasks = sample.read_tasks(prompts=["a red circle"], prompts_file=None, image=None, question=None, edit=None,
                            n=2)
  sample.check_capabilities(model, tasks)
  model.decoder_steps = 2
  out = tmp_path / "out"
  sample.prepare_out(str(out), overwrite=False)
  summary = sample.run(model, tasks, out=str(out), seed=0, steps=2, guidance=3.0, image_guidance=1.5,
                       max_tokens=4, temperature=0.0, batch=2)
  assert summary["images"] == 2
  from PIL import Image
  img = np.asarray(Image.open(out / "0000_a_red_circle_1.png"))
  assert img.shape == (8, 8, 3)              # the decoder's side: UNet sample_size 4 × VAE factor 2


# -------------------------------------------------------------------------------------------- Florence-VL
# The Florence-2 parity test's tiny tower, with one BART layer each side and a vocabulary holding the
# release's prompt ids (up to 47066).
FV_VISION = FLORENCE2_VISION
FV_TEXT = dict(FLORENCE2_TEXT, vocab_size=48_000, encoder_layers=1, decoder_layers=1)
FV_VOCAB = 128
# Native transformers names -> the remote-code names beyond the loader's rules (unused tensors).
TEST_ONLY_NAMES = ((r"^lm_head\.", "language_model.lm_head."),
                   (r"^model\.multi_modal_projector\.visual_temporal_embed\.", "visual_temporal_embed."))


@pytest.fixture(scope="module")
def florence_vl(tmp_path_factory):
  torch.manual_seed(0)
  phi = transformers.Phi3Config(vocab_size=FV_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2)
  llm = perturb_(transformers.Phi3ForCausalLM(phi).eval(), 0.05)
  f2 = transformers.Florence2Config(vision_config=FV_VISION, text_config=FV_TEXT,
                                    image_token_id=FV_TEXT["vocab_size"] - 1)
  florence = perturb_(transformers.Florence2ForConditionalGeneration(f2).eval(), 0.05, seed=2)
  rename = regex_renamer(florence_layout.REMOTE_NAMES + TEST_ONLY_NAMES)
  remote = {}
  for k, v in _np(florence).items():
    if ".embed_tokens." not in k:                     # tied copies of `shared`
      remote[rename(k)] = v.T.copy() if k.endswith("image_projection.weight") else v
  # Spot checks against the names transformers' conversion script lists for the remote-code model.
  for name in ("vision_tower.convs.0.proj.weight", "vision_tower.blocks.0.0.spatial_block.conv1.fn.dw.weight",
               "vision_tower.blocks.0.0.channel_block.channel_attn.fn.qkv.weight",
               "vision_tower.blocks.0.0.spatial_block.window_attn.norm.weight",
               "vision_tower.blocks.0.0.spatial_block.ffn.fn.net.fc1.weight", "image_projection",
               "image_pos_embed.row_embeddings.weight", "language_model.model.shared.weight",
               "language_model.model.encoder.layers.0.fc1.weight"):
    assert name in remote, name
  rs = np.random.RandomState(3)
  tensors = _np(llm)
  tensors.update({florence_layout.REMOTE + k: v for k, v in remote.items()})
  tensors.update({"model.mm_projector.encoder_mlp.0.weight": _rand(rs, 64, 128),
                  "model.mm_projector.encoder_mlp.0.bias": _rand(rs, 64)})
  for i in (1, 2):
    tensors.update({f"model.mm_projector.encoder_mlp.{i}.1.weight": _rand(rs, 64, 64),
                    f"model.mm_projector.encoder_mlp.{i}.1.bias": _rand(rs, 64)})
  config = dict(phi.to_dict(), model_type="llava_phi", architectures=["LlavaPhiForCausalLM"],
                mm_vision_tower="/checkpoints/florence-phi-pretrain/vision_tower", mm_projector_type="mlp3x_gelu",
                mm_hidden_size=32, image_aspect_ratio="pad", mm_patch_merge_type="flat")
  path = str(tmp_path_factory.mktemp("florence_vl"))
  write_checkpoint(path, config, tensors)
  vt = os.path.join(path, "vision_tower")
  os.makedirs(vt)
  v = FV_VISION
  remote_config = dict(model_type="florence2", text_config=FV_TEXT, vision_config=dict(
      model_type="davit", depths=v["depths"], dim_embed=v["embed_dim"], num_heads=v["num_heads"],
      num_groups=v["num_groups"], window_size=3, patch_size=[7, 3, 3, 3], patch_stride=[4, 2, 2, 2],
      patch_padding=[3, 1, 1, 1], patch_prenorm=[False, True, True, True], projection_dim=32,
      image_pos_embed={"type": "learned_abs_2d", "max_pos_embeddings": 20},
      visual_temporal_embedding={"type": "COSINE", "max_temporal_embeddings": 10}))
  for name, content in (("config.json", remote_config), ("preprocessor_config.json",
                                                         {"size": {"height": 64, "width": 64}})):
    with open(os.path.join(vt, name), "w") as f:
      json.dump(content, f)
  with open(os.path.join(vt, "pytorch_model.bin"), "wb") as f:     # the release's pickle copy: ignored
    f.write(b"not a pickle to open")
  return path, tensors, llm, florence, from_pretrained(path)


def test_florence_vl_tensors_land_and_the_lm_matches(florence_vl):
  path, tensors, oracle, florence, r = florence_vl
  m = r.model
  assert (r.kind, r.can_generate, r.can_answer, r.can_edit) == ("florence_vl", False, True, False)
  assert m.config.und_encoder.image_size == 64 and m.config.und_encoder.prompt_ids == florence_layout.RELEASE_PROMPT_IDS
  np.testing.assert_array_equal(m.und_encoder.projector.layers[2].kernel[...],
                                tensors["model.mm_projector.encoder_mlp.2.1.weight"].T)
  np.testing.assert_array_equal(m.und_encoder.florence.image_projection.projection.kernel[...],
                                tensors[florence_layout.REMOTE + "image_projection"])
  _check_logits(m, oracle, FV_VOCAB)


def test_florence_vl_image_features_and_answer_logits(florence_vl):
  *_, florence, r = florence_vl
  m = r.model
  rs = np.random.RandomState(4)
  images = rs.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  n = m.num_image_tokens
  ids = np.concatenate([np.full((2, 1), 1), np.full((2, n), m.config.image_token_id),
                        rs.randint(3, 100, (2, 4))], 1)
  mask = np.ones_like(ids)

  @nnx.jit
  def run(model, x, i, k):          # UnifiedModel.und_embeddings, with the depth stream kept for the check
    pixels = (((x + 1.0) * 0.5) - jnp.asarray((0.485, 0.456, 0.406))) / jnp.asarray((0.229, 0.224, 0.225))
    streams = model.und_encoder.streams(pixels)
    tokens = model.und_encoder.projector(model.und_encoder.fuse(streams))
    embeds = splice_image_tokens(model.llm.embed(i), i, tokens, model.config.image_token_id)
    return streams[0], model.llm(None, attention_mask=k, inputs_embeds=embeds)[:, -1]

  depth, logits = run(m, jnp.asarray(images), jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
  pixels = ((images + 1) * 0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  with torch.no_grad():
    ref = florence.model.get_image_features(nchw(pixels.astype(np.float32))).pooler_output.numpy()
  # The depth stream is Florence-2's projected image features without the global token: the
  # remote-code names (and image_projection's [in, out] layout) landed right.
  np.testing.assert_allclose(np.asarray(depth), ref[:, 1:], atol=ATOL)
  assert logits.shape == (2, FV_VOCAB) and np.isfinite(np.asarray(logits)).all()


# ------------------------------------------------------------------------------- sample.py on the replicas
QWEN_TEMPLATE = "Qwen-Qwen2.5-VL-7B-Instruct.jinja"
QWEN_WORDS = ("system user assistant You are a helpful Please generate image based on the following caption : "
              "red circle what color is it ?").split()


def _with_tokenizer(src, dst, template, words=QWEN_WORDS, specials=("<|im_start|>", "<|im_end|>"),
                    eos="<|im_end|>"):
  """A copy of a replica directory with a word-level stand-in for the release's tokenizer."""
  from oracles import write_word_tokenizer
  shutil.copytree(src, dst)
  text = open(os.path.join(os.path.dirname(__file__), "data", "chat_templates", template)).read()
  write_word_tokenizer(dst, words, specials=specials, chat_template=text, eos=eos)
  return str(dst)


def _sample_py(path, out, tasks):
  """sample.py's run on a released directory: (the runner, its summary, samples.jsonl / answers.jsonl rows)."""
  import sample
  from jaxmodels.serving.offline import ReleasedModelRunner, open_model
  model = open_model(path)
  assert isinstance(model, ReleasedModelRunner)
  sample.check_capabilities(model, tasks)
  sample.prepare_out(str(out), overwrite=False)
  summary = sample.run(model, tasks, out=str(out), seed=0, steps=2, guidance=3.0, image_guidance=1.5,
                       max_tokens=3, temperature=0.0, batch=2)
  rows = {name: [json.loads(x) for x in open(out / name)] for name in ("samples.jsonl", "answers.jsonl")
          if (out / name).exists()}
  return model, summary, rows


def _prompt_tasks(**kw):
  import sample
  args = dict(prompts=["a red circle"], prompts_file=None, image=None, question=None, edit=None, n=2)
  args.update(kw)
  return sample.read_tasks(**args)


@pytest.mark.parametrize("release", ["metaquery", "blip3o_next"])
def test_sample_py_draws_with_the_metaquery_and_next_releases(release, request, tmp_path):
  """Text -> PNGs through sample.py for the releases whose model decodes pixels itself (MetaQuery:
  SANA + DC-AE; BLIP3o-NEXT: AR image tokens, then SANA + DC-AE), in their chat layouts."""
  from PIL import Image
  path = _with_tokenizer(request.getfixturevalue(release)[0], tmp_path / release, QWEN_TEMPLATE)
  model, summary, rows = _sample_py(path, tmp_path / "out", _prompt_tasks())
  assert model.generates and summary["images"] == 2
  ids = model._prompt_ids("a red circle")
  assert ids[0] == model.tok.token_to_id("<|im_start|>") and model.tok.token_to_id("red") in ids
  files = [r["file"] for r in rows["samples.jsonl"]]
  images = [np.asarray(Image.open(tmp_path / "out" / f)) for f in files]
  assert all(img.shape == (8, 8, 3) for img in images)                 # SANA sample_size 4 × DC-AE 2
  assert not np.array_equal(images[0], images[1])                      # two draws, two keys


def test_sample_py_edits_with_the_metaquery_release_and_next_refuses(metaquery, blip3o_next, tmp_path):
  """Image + instruction -> image through sample.py (MetaQuery: the input image's tokens at the
  understanding slot of the prompt, 3-way image/text guidance); BLIP3o-NEXT's release has no editing
  path, refused in one line before anything runs."""
  import sample
  from PIL import Image
  from jaxmodels.errors import ConfigError
  from jaxmodels.serving.offline import open_model
  png = tmp_path / "scene.png"
  Image.fromarray(np.random.RandomState(0).randint(0, 255, (20, 20, 3), np.uint8)).save(png)
  tasks = _prompt_tasks(prompts=[], image=str(png), edit="red circle", n=2)
  path = _with_tokenizer(metaquery[0], tmp_path / "metaquery", QWEN_TEMPLATE)
  model, summary, rows = _sample_py(path, tmp_path / "out", tasks)
  assert model.edit_why is None and summary["images"] == 2
  assert [r["kind"] for r in rows["samples.jsonl"]] == ["edit", "edit"]
  ids = model._prompt_ids("red circle", edit=True)
  image_id = model.model.config.image_token_id
  assert ids.count(image_id) == model.model.num_image_tokens                # one image's placeholders
  assert ids.index(image_id) < ids.index(model.tok.token_to_id("red"))      # image, then the instruction
  img = np.asarray(Image.open(tmp_path / "out" / rows["samples.jsonl"][0]["file"]))
  assert img.shape == (8, 8, 3)
  nxt = open_model(_with_tokenizer(blip3o_next[0], tmp_path / "next", QWEN_TEMPLATE))
  with pytest.raises(ConfigError, match="blip3o_next: this release has no editing path"):
    sample.check_capabilities(nxt, tasks)


def test_sample_py_answers_with_the_florence_vl_release(florence_vl, tmp_path):
  """Image + question -> answer through sample.py for Florence-VL (Phi-3 chat layout, DBFusion tokens
  spliced at the <image> slot); greedy, so the same question gives the same answer."""
  from PIL import Image
  words = ("You are a helpful AI assistant . what color is it ?").split()
  path = _with_tokenizer(florence_vl[0], tmp_path / "florence_vl", "microsoft-Phi-3.5-mini-instruct.jinja", words,
                         specials=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), eos="<|end|>")
  png = tmp_path / "scene.png"
  img = np.full((40, 40, 3), 255, np.uint8)
  img[10:30, 10:30] = (220, 30, 30)
  Image.fromarray(img).save(png)
  tasks = _prompt_tasks(prompts=[], image=str(png), question="what color is it ?")
  model, summary, rows = _sample_py(path, tmp_path / "out", tasks)
  assert (model.generates, model.reads_images) == (False, True)
  assert summary["answers"] == 1 and rows["answers.jsonl"][0]["question"] == "what color is it ?"
  again = model.answer([("what color is it ?", img, 0)], max_tokens=3, temperature=0.0)
  assert again == [rows["answers.jsonl"][0]["answer"]]
  assert model.model.answer_image_size == 64


# ---------------------------------------------------------------------------------------------- bad input
def _copy_with(src, dst, drop=(), change=None):
  reader = SafetensorsReader(src)
  tensors = {k: np.asarray(reader.get(k)) for k in reader.keys() if k not in drop}
  tensors.update(change or {})
  write_checkpoint(str(dst), read_config(src), tensors)
  return str(dst)


def test_unknown_layouts_fail_in_one_line(tmp_path):
  cases = {"foo": {"model_type": "foo"}, "tower": {"model_type": "qwen2"}, "none": {"hidden_size": 8},
           "blip3o": {"model_type": "blip3o_qwen"},
           "llava": {"model_type": "llava_llama", "mm_vision_tower": "openai/clip-vit-large-patch14-336"}}
  for name, config in cases.items():
    os.makedirs(tmp_path / name)
    with open(tmp_path / name / "config.json", "w") as f:
      json.dump(config, f)
  with pytest.raises(CheckpointFormatError, match=r"foo/config\.json: model_type 'foo' matches no released"):
    from_pretrained(str(tmp_path / "foo"))
  with pytest.raises(CheckpointFormatError, match="'qwen2' is a single tower"):
    from_pretrained(str(tmp_path / "tower"))
  with pytest.raises(CheckpointFormatError, match="no 'model_type' key"):
    from_pretrained(str(tmp_path / "none"))
  with pytest.raises(CheckpointFormatError, match="without 'vision_config'"):
    from_pretrained(str(tmp_path / "blip3o"))
  with pytest.raises(CheckpointFormatError, match="LLaVA checkpoint whose vision tower is not Florence-2"):
    from_pretrained(str(tmp_path / "llava"))
  with pytest.raises(CheckpointFormatError, match="not a directory"):
    from_pretrained(str(tmp_path / "missing"))


def test_missing_and_misshaped_tensors_name_file_and_key(blip3o_next, tmp_path):
  path = blip3o_next[0]
  missing = _copy_with(path, tmp_path / "missing", drop=("model.diffusion_connector.2.weight",))
  with pytest.raises(CheckpointFormatError, match=r"tensor 'model\.diffusion_connector\.2\.weight' not found"):
    from_pretrained(missing)
  bad = _copy_with(path, tmp_path / "bad",
                   change={"model.diffusion_connector.0.weight": np.zeros((24, 63), np.float32)})
  with pytest.raises(CheckpointFormatError, match=re.escape(
      f"{bad}/model.safetensors: tensor 'model.diffusion_connector.0.weight' has shape (24, 63)")):
    from_pretrained(bad)


def test_pickle_weights_are_refused(florence_vl, tmp_path):
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"model_type": "metaquery", "mllm_id": "x", "num_metaqueries": 4}, f)
  with open(tmp_path / "pytorch_model.bin", "wb") as f:
    f.write(b"\x80\x04 would run code if unpickled")
  with pytest.raises(CheckpointFormatError, match=r"pytorch_model\.bin: a pickle weights file, which jaxmodels "
                                                  r"never opens"):
    from_pretrained(str(tmp_path))
  # Florence-VL without the Florence-2 tensors in its safetensors and only a pickle in vision_tower/.
  path = florence_vl[0]
  remote = [k for k in SafetensorsReader(path).keys() if k.startswith(florence_layout.REMOTE)]
  stripped = _copy_with(path, tmp_path / "florence", drop=remote)
  shutil.copytree(os.path.join(path, "vision_tower"), os.path.join(stripped, "vision_tower"))
  with pytest.raises(CheckpointFormatError, match=r"vision_tower/pytorch_model\.bin: a pickle weights file"):
    from_pretrained(stripped)
