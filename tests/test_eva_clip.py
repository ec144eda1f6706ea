"""EVA-CLIP vision tower (jaxmodels/vision/eva_clip.py) and its loader (jaxmodels/hf/eva_clip_family.py).

The oracle is `_Tower` below, a minimal PyTorch module written for this test as a transcription of the
official EVA-CLIP block math (baaivision/EVA `EVAVisionTransformer`, as copied into BLIP3-o): conv patch
embedding with bias, class token, absolute positions, blocks with a fused qkv projection whose bias is
cat(q_bias, 0, v_bias) (or one full bias), post- or pre-norm LayerNorms (eps 1e-6), exact GELU MLP; the
output is the last block's (no final norm). timm's `Eva`, the preferred independent oracle, needs
torchvision, and no CPU build matching torch 2.13 is installable here. Its state dict has the official
tensor names and is saved as safetensors under `visual.` with the other tensors of a full CLIP checkpoint.
"""
from __future__ import annotations

import importlib
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmodels import hf, presets
from jaxmodels.errors import CheckpointFormatError, ConfigError
from jaxmodels.hf.eva_clip_family import bicubic_resize_matrix, load_eva_clip
from jaxmodels.vision.eva_clip import EvaClipConfig, EvaClipVisionTransformer
from jaxmodels.vision.vit import avg_pool_tokens
from tests.oracles import nchw, perturb_

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")
nn = torch.nn
F = torch.nn.functional

# The tiny BLIP3-o generation encoder's shape (configs/paper_common.py): 32 px, patch 2 -> 16×16 patches.
WIDTH, HEADS, MLP, LAYERS, IMAGE, PATCH = 32, 2, 64, 2, 32, 2
GRID = IMAGE // PATCH
TINY = dict(hidden_size=WIDTH, intermediate_size=MLP, num_layers=LAYERS, num_heads=HEADS, image_size=IMAGE,
            patch_size=PATCH)


class _Attention(nn.Module):
  def __init__(self, dim, heads, bias):
    super().__init__()
    self.heads, self.bias, self.scale = heads, bias, (dim // heads) ** -0.5
    self.qkv = nn.Linear(dim, 3 * dim, bias=bias == "qkv")
    if bias == "qv":
      self.q_bias = nn.Parameter(torch.zeros(dim))
      self.v_bias = nn.Parameter(torch.zeros(dim))
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    if self.bias == "qv":
      qkv = F.linear(x, self.qkv.weight, torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias)))
    else:
      qkv = self.qkv(x)
    q, k, v = qkv.reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
    attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
  def __init__(self, dim, heads, hidden, postnorm, bias):
    super().__init__()
    self.postnorm = postnorm
    self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
    self.attn, self.mlp = _Attention(dim, heads, bias), _Mlp(dim, hidden)

  def forward(self, x):
    if self.postnorm:
      x = x + self.norm1(self.attn(x))
      return x + self.norm2(self.mlp(x))
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
  def __init__(self, dim, patch):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class _Tower(nn.Module):
  def __init__(self, *, postnorm=True, bias="qv", image=IMAGE):
    super().__init__()
    n = (image // PATCH) ** 2
    self.patch_embed = _PatchEmbed(WIDTH, PATCH)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
    self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, WIDTH))
    self.blocks = nn.ModuleList(_Block(WIDTH, HEADS, MLP, postnorm, bias) for _ in range(LAYERS))

  def forward(self, x):                        # [B, 3, H, W] -> the last block's output [B, 1 + N, D]
    x = self.patch_embed(x)
    x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
    for block in self.blocks:
      x = block(x)
    return x


def _oracle(seed=0, **kw):
  torch.manual_seed(seed)
  return perturb_(_Tower(**kw), seed=seed).eval()


def _save_official(tower, file, extra=None):
  """The tower under `visual.` beside the rest of a full EVA-CLIP checkpoint (final norm, head, text)."""
  tensors = {f"visual.{k}": v.detach().contiguous() for k, v in tower.state_dict().items()}
  tensors.update({"visual.norm.weight": torch.ones(WIDTH), "visual.head.weight": torch.zeros(16, WIDTH),
                  "text.token_embedding.weight": torch.zeros(8, 16), "logit_scale": torch.ones(())})
  tensors.update(extra or {})
  st.save_file(tensors, str(file))
  return str(file)


def _pixels(seed=0, size=IMAGE, batch=2):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def _torch_out(tower, pixels):
  with torch.no_grad():
    return tower(nchw(pixels)).numpy()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  """The EVA-CLIP-E/14-plus layout (post-norm, q_bias + v_bias) at tiny size, saved with official names."""
  tower = _oracle()
  return tower, _save_official(tower, tmp_path_factory.mktemp("eva") / "eva_clip.safetensors")


@pytest.mark.parametrize("scan", [False, True])
def test_last_block_matches_the_official_math(official, scan):
  tower, file = official
  ours = load_eva_clip(file, EvaClipConfig(**TINY), scan_layers=scan)
  attn = ours.layers.blocks.attn if scan else ours.layers.blocks[0].attn
  assert ours.config.qkv_bias == "qv" and ours.config.postnorm and attn.k.bias is None
  pixels = _pixels()
  expected = _torch_out(tower, pixels)
  out = ours(jnp.asarray(pixels), output_hidden_states=True)
  np.testing.assert_allclose(np.asarray(out.last_hidden_state), expected, atol=1e-4, rtol=1e-4)
  assert out.hidden_states.shape == (LAYERS + 1, 2, 1 + GRID ** 2, WIDTH)
  np.testing.assert_array_equal(out.hidden_states[-1], out.last_hidden_state)
  np.testing.assert_allclose(np.asarray(ours.patch_tokens(jnp.asarray(pixels))), expected[:, 1:], atol=1e-4,
                             rtol=1e-4)


def test_pre_norm_and_fused_bias_variants(tmp_path):
  """`postnorm=False` (the other EVA-CLIP sizes) and one fused qkv bias (BLIP3-o's declared layout):
  the layout is read from the file; a tower saved alone has no prefix."""
  tower = _oracle(seed=1, postnorm=False, bias="qkv")
  file = str(tmp_path / "tower.safetensors")
  st.save_file({k: v.detach().contiguous() for k, v in tower.state_dict().items()}, file)
  ours = load_eva_clip(file, EvaClipConfig(**TINY, postnorm=False))
  assert ours.config.qkv_bias == "qkv"
  pixels = _pixels(1)
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(pixels))), _torch_out(tower, pixels), atol=1e-4,
                             rtol=1e-4)


def test_export_loads_back_into_the_official_module(official, tmp_path):
  tower, file = official
  ours = load_eva_clip(file, EvaClipConfig(**TINY))
  hf.save_pretrained(ours, str(tmp_path))
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  assert config["model_type"] == "eva_clip_vision" and (config["width"], config["head_width"]) == (WIDTH, 16)
  back = _Tower()
  back.load_state_dict(st.load_file(str(tmp_path / "model.safetensors")), strict=True)
  pixels = _pixels(2)
  expected = _torch_out(tower, pixels)
  np.testing.assert_allclose(_torch_out(back.eval(), pixels), expected, atol=1e-6)
  again = hf.from_pretrained(str(tmp_path), scan_layers=True)
  assert isinstance(again, EvaClipVisionTransformer) and again.config == ours.config.replace(scan_layers=True)
  np.testing.assert_allclose(np.asarray(again(jnp.asarray(pixels))), expected, atol=1e-4, rtol=1e-4)


def test_position_table_of_another_grid_is_resized_bicubically(tmp_path):
  """A 224-px release read at 448 px, in small: a 4×4 table resized to 16×16 as the official
  `resize_eva_pos_embed` does (torch bicubic, align_corners=False, class position kept)."""
  small = _oracle(seed=3, image=IMAGE // 4)
  file = _save_official(small, tmp_path / "small.safetensors")
  ours = load_eva_clip(file, EvaClipConfig(**TINY))
  table, g0 = small.pos_embed.detach(), GRID // 4
  grid = F.interpolate(table[:, 1:].reshape(1, g0, g0, WIDTH).permute(0, 3, 1, 2), size=(GRID, GRID),
                       mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, GRID ** 2, WIDTH)
  np.testing.assert_allclose(np.asarray(ours.position_embedding[...]), torch.cat([table[:, :1], grid], 1).numpy(),
                             atol=1e-6)
  with pytest.raises(CheckpointFormatError, match=r"small.safetensors: tensor 'visual.pos_embed' has shape "
                                                  r"\(1, 17, 32\), which does not fit"):
    load_eva_clip(file, EvaClipConfig(**TINY), resize_pos_embed=False)


@pytest.mark.parametrize("size_in,size_out", [(16, 32), (7, 3), (5, 5)])
def test_bicubic_weights_match_torch(size_in, size_out):
  x = np.random.default_rng(0).normal(size=(size_in, size_in)).astype(np.float64)
  expected = F.interpolate(torch.tensor(x)[None, None], size=(size_out, size_out), mode="bicubic",
                           align_corners=False)[0, 0].numpy()
  r = bicubic_resize_matrix(size_in, size_out)
  np.testing.assert_allclose(r @ x @ r.T, expected, atol=1e-12)


def test_bad_checkpoints_raise_one_line_errors(official, tmp_path):
  tower, _ = official
  base = {f"visual.{k}": v.detach().contiguous() for k, v in tower.state_dict().items()}

  def save(name, tensors):
    st.save_file(tensors, str(tmp_path / name))
    return str(tmp_path / name)

  cases = [
      (save("missing.safetensors", {k: v for k, v in base.items() if k != "visual.blocks.1.mlp.fc2.bias"}),
       r"missing.safetensors: tensor 'visual.blocks.1.mlp.fc2.bias' not found in the checkpoint"),
      (save("shape.safetensors", {**base, "visual.blocks.0.attn.qkv.weight": torch.zeros(3 * WIDTH, 8)}),
       r"shape.safetensors: tensor 'visual.blocks.0.attn.qkv.weight' has shape \(96, 8\) \(rows \d+:\d+\), "
       r"which does not fit parameter layers.blocks.0.attn.[qkv].kernel of shape \(32, 2, 16\)"),
      (save("rope.safetensors", {**base, "visual.rope.freqs_cos": torch.zeros(16, 16)}),
       r"rope.safetensors: tensor 'visual.rope.freqs_cos': rotary position embedding"),
      (save("scale.safetensors", {**base, "visual.blocks.0.gamma_1": torch.zeros(WIDTH)}),
       r"tensor 'visual.blocks.0.gamma_1': layer scale is not modelled"),
      (save("text.safetensors", {"text.token_embedding.weight": torch.zeros(4, 4)}),
       r"text.safetensors: no tensor named \[prefix\]patch_embed.proj.weight"),
  ]
  for file, match in cases:
    with pytest.raises(CheckpointFormatError, match=match) as err:
      load_eva_clip(file, EvaClipConfig(**TINY))
    assert "\n" not in str(err.value)
  with pytest.raises(CheckpointFormatError, match=r"eva_clip.safetensors: tensor 'visual.blocks.0.mlp.fc1.bias' "
                                                  r"has shape \(64,\), which does not fit .* of shape \(48,\)"):
    load_eva_clip(official[1], EvaClipConfig(**{**TINY, "intermediate_size": 48}))   # the config is not the file's
  with pytest.raises(ConfigError, match="unknown_option"):
    load_eva_clip(cases[0][0], EvaClipConfig(**TINY), unknown_option=1)


def test_pickles_are_refused_never_unpickled(tmp_path):
  sd = {"visual.cls_token": torch.zeros(1, 1, 4)}
  for name in ("EVA02_CLIP_E_psz14_plus_s9B.pt", "model.bin", "disguised.safetensors"):
    torch.save(sd, str(tmp_path / name))
  folder = tmp_path / "folder"
  folder.mkdir()
  torch.save(sd, str(folder / "pytorch_model.bin"))
  for path in (tmp_path / "EVA02_CLIP_E_psz14_plus_s9B.pt", tmp_path / "model.bin",
               tmp_path / "disguised.safetensors", folder / "pytorch_model.bin"):
    target = str(folder if path.parent == folder else path)
    with pytest.raises(CheckpointFormatError, match=r"a PyTorch pickle, which jaxmodels never unpickles; "
                                                    r"convert it to safetensors outside jaxmodels") as err:
      load_eva_clip(target)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_config_json_errors(tmp_path):
  for name, config, error, match in [
      ("typo", {"model_type": "eva_clip_visoin"}, CheckpointFormatError,
       "unsupported model type 'eva_clip_visoin'"),
      ("nowidth", {"model_type": "eva_clip_vision", "layers": 2}, CheckpointFormatError,
       r"nowidth/config.json: missing key 'width'"),
      ("rope", {"model_type": "eva_clip_vision", "width": 32, "layers": 2, "rope": True}, ConfigError,
       r"rope/config.json: rope=True is not supported by the EVA-CLIP tower"),
  ]:
    os.makedirs(tmp_path / name)
    with open(tmp_path / name / "config.json", "w") as f:
      json.dump(config, f)
    with pytest.raises(error, match=match):
      hf.from_pretrained(str(tmp_path / name))


def test_official_vision_cfg_converts():
  """BLIP3-o's model_configs/eva-clip-E-14-plus.json vision_cfg -> the preset (qkv_bias: true = q/v biases)."""
  from jaxmodels.hf.eva_clip_family import config_from_hf
  vision_cfg = {"drop_path_rate": 0, "eva_model_name": "eva-clip-E-14-plus", "head_width": 112, "image_size": 448,
                "layers": 64, "mlp_ratio": 8.571428571428571, "patch_size": 14, "postnorm": True, "qkv_bias": True,
                "width": 1792, "xattn": True}
  expected = presets.eva_clip_preset("eva-clip-e-14-plus")
  assert config_from_hf({"embed_dim": 1024, "vision_cfg": vision_cfg}) == expected


def test_preset_is_the_published_size_and_blip3o_builds_it():
  """4,350,093,568 parameters: the ~4.4B EVA-CLIP-E/14-plus vision tower without its final norm and
  CLIP head; BLIP3-o's configs build it (scanned) as the generation target encoder."""
  from jaxmodels.unified.build import unified_config
  from jaxmodels.unified.encoders import build_encoder
  c = presets.eva_clip_preset("eva-clip-e-14-plus")
  assert (c.hidden_size, c.num_layers, c.head_dim, c.intermediate_size, c.grid_size) == (1792, 64, 112, 15360, 32)
  assert c.intermediate_size == int(1792 * 8.571428571428571)
  for name in ("blip3o_8b", "blip3o_4b"):
    ucfg = unified_config(importlib.import_module(f"configs.{name}").get_config().model)
    assert ucfg.gen_encoder == c.replace(scan_layers=True, dtype="bfloat16")
    assert (ucfg.target_channels, ucfg.target_side) == (1792, 8)
  tower = nnx.eval_shape(lambda: build_encoder(ucfg.gen_encoder, rngs=nnx.Rngs(0)))
  assert isinstance(tower, EvaClipVisionTransformer)
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(tower, nnx.Param))) == 4_350_093_568


def test_blip3o_target_is_the_pooled_last_block_without_the_class_token(official):
  """The tiny BLIP3-o config's gen encoder (scanned) with the oracle's weights: the model's [-1, 1]
  images get the OpenAI-CLIP normalisation, then the class token is dropped and 4×4 pooled."""
  from jaxmodels.unified.build import unified_config
  from jaxmodels.unified.encoders import clip_pixels, encoder_tokens
  ucfg = unified_config(importlib.import_module("configs.blip3o_8b").get_config("tiny").model)
  assert ucfg.gen_encoder == EvaClipConfig(**TINY, scan_layers=True)
  tower = load_eva_clip(official[1], ucfg.gen_encoder)
  images = jnp.tanh(jnp.asarray(_pixels(4, size=ucfg.gen_encoder.image_size, batch=1)))
  tokens = encoder_tokens(tower, images, ucfg.gen_pool, last_block=True)
  expected = avg_pool_tokens(jnp.asarray(_torch_out(official[0], np.asarray(clip_pixels(images))))[:, 1:],
                             ucfg.gen_pool)
  assert tokens.shape == (1, ucfg.target_side ** 2, WIDTH) == (1, (GRID // 4) ** 2, WIDTH)
  np.testing.assert_allclose(np.asarray(tokens), np.asarray(expected), atol=1e-4, rtol=1e-4)
