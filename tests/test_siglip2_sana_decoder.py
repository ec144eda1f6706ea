"""BLIP3-o's SigLIP2 -> SANA reconstructor (`SanaFeatureDecoder`, jaxmodels/unified/released/siglip2_sana.py)
on tiny random replicas of the release in both savers' layouts (see that file): a SigLIP vision model,
SANA transformer and DC-AE from transformers / diffusers plus a torch connector, saved whole under the
release's prefixes with its config.json keys. The reference is the seed's sampling loop transcribed in
torch: SigLIP hidden_states[-2] pooled, [black image; image] through the connector, the diffusers
transformer stepped by diffusers' FlowMatchEulerDiscreteScheduler (Reconstruction branch) or
DPMSolverMultistepScheduler (main branch), CFG 3.0, DC-AE decode."""
import json
import math
import os
import re

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")
import torch  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from jaxmodels.errors import CheckpointFormatError  # noqa: E402
from jaxmodels.hf.safetensors_io import SafetensorsReader, read_config  # noqa: E402
from jaxmodels.unified import from_pretrained  # noqa: E402
from jaxmodels.unified.pixel_decoder import SanaFeatureDecoder  # noqa: E402
from oracles import nchw, perturb_  # noqa: E402
from test_released_layouts import DCAE, SANA, _copy_with  # noqa: E402  (the tiny SANA / DC-AE replicas)

ATOL = 1e-4
STEPS, GUIDANCE, POOLED = 3, 3.0, 4
SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32,
              patch_size=8)
SANA_SCHEDULER = dict(algorithm_type="dpmsolver++", solver_order=2, prediction_type="flow_prediction",
                      use_flow_sigmas=True, solver_type="midpoint", lower_order_final=True,
                      final_sigmas_type="zero", flow_shift=3.0)


def connector(in_dim, width):
  """The seed's connector: Linear -> GELU(tanh) -> Linear -> RMSNorm(eps 1e-5, weight √5.5)."""
  norm = diffusers.models.normalization.RMSNorm(width, eps=1e-5, elementwise_affine=True)
  with torch.no_grad():
    norm.weight.fill_(math.sqrt(5.5))
  return torch.nn.Sequential(torch.nn.Linear(in_dim, width), torch.nn.GELU(approximate="tanh"),
                             torch.nn.Linear(width, width), norm)


class Holder(torch.nn.Module):
  """A module whose children are the given named parts (so state_dict keys carry the release's prefixes)."""

  def __init__(self, **parts):
    super().__init__()
    for name, part in parts.items():
      self.add_module(name, part)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  """The torch parts, a SANA pipeline folder (configs + SANA's DPM scheduler config) and a SigLIP folder."""
  torch.manual_seed(0)
  enc = perturb_(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SIGLIP)).eval(), 0.05)
  sana = perturb_(diffusers.SanaTransformer2DModel(**SANA).eval(), 0.05, seed=1)
  vae = perturb_(diffusers.AutoencoderDC(**DCAE).eval(), 0.05, seed=2)
  conn = perturb_(connector(SIGLIP["hidden_size"], SANA["caption_channels"]).eval(), 0.05, seed=3)
  root = tmp_path_factory.mktemp("siglip2_sana_parts")
  pipe, siglip = str(root / "sana_pipeline"), str(root / "siglip2")
  sana.save_config(os.path.join(pipe, "transformer"))
  vae.save_pretrained(os.path.join(pipe, "vae"))           # weights too: a release without vae.* mounts them
  diffusers.DPMSolverMultistepScheduler(**SANA_SCHEDULER).save_config(os.path.join(pipe, "scheduler"))
  enc.config.save_pretrained(siglip)
  return dict(enc=enc, sana=sana, vae=vae, conn=conn, pipe=pipe, siglip=siglip)


def write_release(path, p, layout):
  """The release's directory: config.json + model.safetensors under the layout's prefixes."""
  os.makedirs(path, exist_ok=True)
  if layout == "reconstruction":
    model = Holder(encoder=p["enc"], transformer=p["sana"], connector=p["conn"], vae=p["vae"])
    config = dict(model_type="diffusion_decoder", encoder_id=p["siglip"], diffusion_id=p["pipe"],
                  vae_id=p["pipe"], noise_scheduler_id=p["pipe"], scheduler_id=p["pipe"],
                  num_pooled_tokens=POOLED, target_image_size=8, vae_downsample_f=2, in_channels=8)
  else:
    model = Holder(encoder=Holder(model=p["enc"]), transformer=Holder(transformer=p["sana"], connector=p["conn"]),
                   vae=p["vae"])
    config = dict(model_type="encoder", encoder_id=p["siglip"], unet_id=p["pipe"], vae_id=p["pipe"],
                  noise_scheduler_id=p["pipe"], scheduler_id=p["pipe"], diffusion_model="sana",
                  num_pooled_tokens=POOLED, input_size=SANA["sample_size"], in_channels=8, pooler_output=False)
  enc = "encoder.model." if layout == "main" else "encoder."
  # SigLIP under the transformers 4 names the release was saved with (`vision_model.` inside the tower).
  tensors = {(enc + "vision_model." + k[len(enc):] if k.startswith(enc) else k): v.contiguous()
             for k, v in model.state_dict().items()}
  save_file(tensors, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  return str(path)


def torch_features(enc, pixels):
  """The seed's conditioning: hidden_states[-2], adaptive 2-D average pooling to POOLED tokens."""
  h = enc(pixels, output_hidden_states=True).hidden_states[-2]
  side = int(h.shape[1] ** 0.5)
  grid = h.view(-1, side, side, h.shape[-1]).permute(0, 3, 1, 2)
  return torch.nn.functional.adaptive_avg_pool2d(grid, int(POOLED ** 0.5)).permute(0, 2, 3, 1).reshape(
      h.shape[0], -1, h.shape[-1])


def torch_reconstruct(p, images, noise, layout):
  """The seed pipelines' __call__ loop with given noise; images [B, S, S, 3] in [-1, 1] -> [-1, 1] NHWC."""
  with torch.no_grad():
    source = nchw(images)
    x = torch.cat([-torch.ones_like(source), source])                      # [null (black); images]
    cond = p["conn"](torch_features(p["enc"], x))
    if layout == "reconstruction":
      scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(p["pipe"], subfolder="scheduler")
      scheduler.set_timesteps(STEPS, sigmas=np.linspace(1.0, 1 / STEPS, STEPS))
    else:
      scheduler = diffusers.DPMSolverMultistepScheduler.from_pretrained(p["pipe"], subfolder="scheduler")
      scheduler.set_timesteps(STEPS)
    latents = nchw(noise)
    for t in scheduler.timesteps:
      both = scheduler.scale_model_input(torch.cat([latents] * 2), t) if hasattr(
          scheduler, "scale_model_input") else torch.cat([latents] * 2)
      v = p["sana"](hidden_states=both, timestep=t.unsqueeze(0).expand(both.shape[0]),
                    encoder_hidden_states=cond, encoder_attention_mask=None).sample
      v_uncond, v_cond = v.chunk(2)
      latents = scheduler.step(v_uncond + GUIDANCE * (v_cond - v_uncond), t, latents).prev_sample
    out = p["vae"].decode(latents / p["vae"].config.scaling_factor).sample.clamp(-1, 1)
    return out.permute(0, 2, 3, 1).numpy(), cond[images.shape[0]:].numpy()


@nnx.jit
def our_reconstruct(decoder, images, noise):
  feats = decoder.encode(images)
  latents = decoder.sample_latents(noise, feats, decoder.null_features(), num_steps=STEPS, guidance=GUIDANCE)
  return decoder.latents_to_images(latents), decoder.connector(feats)


@pytest.fixture(scope="module", params=["reconstruction", "main"])
def release(request, parts, tmp_path_factory):
  path = write_release(tmp_path_factory.mktemp(f"SigLIP2_SANA_{request.param}"), parts, request.param)
  return request.param, path, from_pretrained(path)


def test_layout_loads_as_a_reconstructor(release):
  layout, path, r = release
  assert (r.kind, r.can_generate, r.can_answer, r.can_edit) == ("siglip2_sana", False, False, False)
  assert isinstance(r.model, SanaFeatureDecoder) and r.pixel_decoder is r.model
  d = r.model
  assert (d.solver, d.shift) == (("euler", 1.0) if layout == "reconstruction" else ("dpm++2m", 3.0))
  assert (d.num_pooled_tokens, d.latent_side, d.image_size) == (POOLED, 4, 8)
  head = ("encoder.model." if layout == "main" else "encoder.") + "vision_model.head."
  assert r.unused and all(group.startswith(head) for group in r.unused)      # only SigLIP's MAP head
  reader = SafetensorsReader(path)
  prefix = "transformer.connector." if layout == "main" else "connector."
  np.testing.assert_array_equal(np.asarray(d.connector.fc1.kernel[...]),
                                np.asarray(reader.get(prefix + "0.weight")).T)
  np.testing.assert_array_equal(np.asarray(d.connector.norm.scale[...]), np.asarray(reader.get(prefix + "3.weight")))


def test_reconstruction_matches_the_seed_sampling(release, parts):
  layout, _, r = release
  rs = np.random.RandomState(0)
  images = rs.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  noise = rs.randn(2, 4, 4, 8).astype(np.float32)
  ref, ref_cond = torch_reconstruct(parts, images, noise, layout)
  ours, cond = our_reconstruct(r.model, jnp.asarray(images), jnp.asarray(noise))
  np.testing.assert_allclose(np.asarray(cond), ref_cond, atol=ATOL)
  assert ours.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(np.asarray(ours), ref, atol=ATOL)


def test_decode_and_from_directory(parts, tmp_path):
  d = SanaFeatureDecoder.from_directory(write_release(tmp_path / "release", parts, "reconstruction"))
  feats = jnp.asarray(np.random.RandomState(1).randn(1, POOLED, SIGLIP["hidden_size"]).astype(np.float32))
  run = nnx.jit(lambda m, f, k: m.decode(f, None, k, num_steps=2))
  images = run(d, feats, jax.random.key(0))
  assert images.shape == (1, 8, 8, 3) and np.isfinite(np.asarray(images)).all()
  assert float(jnp.abs(images).max()) <= 1.0


def test_release_without_encoder_and_vae_tensors(parts, tmp_path):
  path = write_release(tmp_path / "ok", parts, "reconstruction")
  drop = tuple(k for k in SafetensorsReader(path).keys() if k.startswith(("encoder.", "vae.")))
  r = from_pretrained(_copy_with(path, tmp_path / "decoder_only", drop=drop))
  d = r.model
  assert d.encoder is None and any("no encoder" in n for n in r.notes)
  mounted = parts["vae"].decoder.conv_in.weight.detach().numpy()             # from the pipeline's vae/ folder
  np.testing.assert_array_equal(np.asarray(d.vae.decoder.conv_in.kernel[...]), mounted.transpose(2, 3, 1, 0))
  with pytest.raises(CheckpointFormatError, match="no SigLIP2 encoder loaded"):
    d.encode(jnp.zeros((1, 32, 32, 3)))


def test_bad_releases_fail_in_one_line(parts, tmp_path):
  path = write_release(tmp_path / "ok", parts, "reconstruction")
  missing = _copy_with(path, tmp_path / "missing", drop=("connector.2.weight",))
  with pytest.raises(CheckpointFormatError, match=r"tensor 'connector\.2\.weight' not found"):
    from_pretrained(missing)
  bad = _copy_with(path, tmp_path / "bad", change={"transformer.proj_out.weight": np.zeros((3, 5), np.float32)})
  with pytest.raises(CheckpointFormatError, match=re.escape(
      f"{bad}/model.safetensors: tensor 'transformer.proj_out.weight' has shape (3, 5)")):
    from_pretrained(bad)
  no_connector = _copy_with(path, tmp_path / "noconn", drop=tuple(f"connector.{i}.weight" for i in (0, 2, 3)))
  with pytest.raises(CheckpointFormatError, match=r"noconn: tensor 'transformer\.connector\.0\.weight'"):
    from_pretrained(no_connector)
  pickled = tmp_path / "pickled"
  os.makedirs(pickled)
  with open(pickled / "config.json", "w") as f:
    json.dump(read_config(path), f)
  with open(pickled / "pytorch_model.bin", "wb") as f:
    f.write(b"\x80\x04 would run code if unpickled")
  with pytest.raises(CheckpointFormatError, match=r"pytorch_model\.bin: a pickle weights file, which jaxmodels "
                                                  r"never opens"):
    from_pretrained(str(pickled))
