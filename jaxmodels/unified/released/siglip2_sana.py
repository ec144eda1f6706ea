"""BLIP3-o's released SigLIP2 -> SANA reconstructor (HF BLIP3o/SigLIP2_SANA; spec §2.6) ->
`pixel_decoder.SanaFeatureDecoder`.

The release is one `transformers.PreTrainedModel` saved whole (config.json + model.safetensors): the
SigLIP2 encoder, the connector, the SANA transformer and the DC-AE. Two savers exist in the seed repo
(JiuhaiChen/BLIP3o), with the same parts under different prefixes; the layout is told apart by the
stored connector's name:

  "main"  branch main @ 4689ec3, siglip2_sana/reconstruct.py `Reconstruct` (+ pipeline_reconstruction.py,
          inference.py: what the BLIP3-o README tells one to run on the BLIP3o/SigLIP2_SANA download).
          config.json: a `ReconstructConfig` (no model_type of its own; its first base EncoderConfig gives
          "encoder") with encoder_id ("google/siglip2-so400m-patch16-512"), unet_id (the SANA pipeline
          the transformer came from), vae_id, scheduler_id, input_size (latent side), num_pooled_tokens
          (-1: no pooling), in_channels.
          tensors: encoder.model.vision_model.*  (SiglipVisionModel), transformer.transformer.*
          (SanaTransformer2DModel), transformer.connector.{0,2,3}.*, vae.* (AutoencoderDC).
          sampling: DPMSolverMultistepScheduler from `<scheduler_id>/scheduler` (SANA's: flow
          prediction, flow_shift 3.0) -> solver "dpm++2m", shift 3.0.
  "reconstruction"  branch Reconstruction, train_image_reconstruction.py `DiffusionDecoder` /
          `DiffusionDecoderPipeline` (inference.py there).
          config.json: model_type "diffusion_decoder" with encoder_id, diffusion_id, vae_id,
          noise_scheduler_id, scheduler_id, num_pooled_tokens (64), target_image_size (512).
          tensors: encoder.vision_model.*, transformer.*, connector.{0,2,3}.*, vae.*.
          sampling: FlowMatchEulerDiscreteScheduler from `<scheduler_id>/scheduler` (its `shift`; SANA's
          folder holds only `flow_shift`, which FlowMatchEuler ignores: 1.0) on sigmas
          linspace(1, 1/N, N) -> solver "euler".

Both: features = SigLIP's hidden_states[-2], pooled to num_pooled_tokens; connector Linear(1152 -> 2304)
-> GELU(tanh) -> Linear -> RMSNorm (weight initialised to √5.5); CFG scale 3.0 against a black image's
features (the null image first in the doubled batch), 30 steps; the transformer's and DC-AE's configs
come from unet_id / diffusion_id and vae_id (a local diffusers pipeline folder, else the published
config of a known hub id), SigLIP's from encoder_id (a local folder's config.json, else the published
siglip2-so400m-patch16-512 shape). The SigLIP head (`...vision_model.head.*`) is unused.

UNCONFIRMED (the corpora hold the code, not the hub files): which saver wrote the hub files (both load),
the model_type stored ("encoder", "diffusion_decoder" and "Sana" are accepted when a SANA id key is
present), the scheduler the weights were trained for under "main" (its DPM default is an option: pass
overrides={"solver": "euler"} (shift 1.0 unless "shift" is given too) for the other), whether encoder.* and vae.* are stored
(without encoder.*, `encode` is unavailable and `decode` needs given features; without vae.*, a local
vae_id folder's vae/ weights are mounted). Check the names with the directory's safetensors index.
"""
from __future__ import annotations

import os

from flax import nnx

from jaxmodels.errors import CheckpointFormatError
from jaxmodels.flow.dcae import AutoencoderDC
from jaxmodels.flow.sana import SanaTransformer
from jaxmodels.hf import dcae_family, sana_family, vision_family
from jaxmodels.hf.keymap import Source
from jaxmodels.hf.safetensors_io import read_config
from jaxmodels.unified.connector import CondProjection
from jaxmodels.unified.pixel_decoder import SANA_SOLVERS, SanaFeatureDecoder
from jaxmodels.unified.released import common
from jaxmodels.vision.vit import VisionTransformer

KIND = "siglip2_sana"
MODEL_TYPES = ("encoder", "diffusion_decoder", "Sana")
SANA_KEYS = ("unet_id", "diffusion_id")
SIGLIP2_512 = "google/siglip2-so400m-patch16-512"
# The vision tower of google/siglip2-so400m-patch16-512 (a fixed-resolution `siglip` checkpoint).
SIGLIP2_512_VISION = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                          num_hidden_layers=27, num_attention_heads=16, image_size=512, patch_size=16,
                          hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
# layout -> (encoder prefix, transformer prefix, connector prefix, SANA config key, solver, pooling)
LAYOUTS = {
    "main": ("encoder.model.", "transformer.transformer.", "transformer.connector.", "unet_id", "dpm++2m", -1),
    "reconstruction": ("encoder.", "transformer.", "connector.", "diffusion_id", "euler", 64),
}
# Without a local scheduler folder: FlowMatchEuler's default shift, SANA's DPM flow_shift.
DEFAULT_SHIFT = {"euler": 1.0, "dpm++2m": 3.0}
NUM_STEPS, GUIDANCE = 30, 3.0


def matches(config: dict, path: str) -> bool:
  return config.get("model_type") in MODEL_TYPES and any(k in config for k in SANA_KEYS)


def layout_of(ckpt: common.Checkpoint) -> str:
  """"main" or "reconstruction", from which connector name is stored."""
  for name, (_, _, connector, *_) in LAYOUTS.items():
    if ckpt.weights.stored(connector + "0.weight"):
      return name
  raise CheckpointFormatError(f"{ckpt.path}: tensor 'transformer.connector.0.weight' (or "
                              f"'connector.0.weight') not found in the checkpoint: not a SigLIP2_SANA layout")


def _encoder_config(ckpt: common.Checkpoint, dtype: str):
  kw = dict(use_head=False, **common.exec_options(dtype))
  folder = ckpt.local_dir(ckpt.config.get("encoder_id"))
  if folder is not None:
    return common.convert(common.family("vision"), read_config(folder), folder, **kw)
  value = ckpt.config.get("encoder_id", SIGLIP2_512)
  if value != SIGLIP2_512:
    raise CheckpointFormatError(f"{ckpt.config_file}: encoder_id={value!r} is neither a local folder nor "
                                f"{SIGLIP2_512!r}; pass overrides={{'encoder_id': <its folder>}}")
  return common.convert(common.family("vision"), SIGLIP2_512_VISION, ckpt.path, **kw)


def _scheduler_shift(ckpt: common.Checkpoint, solver: str, default: float) -> float:
  """The shift of the scheduler config `scheduler_id` names (`shift` for FlowMatchEuler, `flow_shift`
  for DPM-Solver), when it is a local folder; else `default`."""
  folder = ckpt.local_dir(ckpt.config.get("scheduler_id"))
  file = os.path.join(folder, "scheduler", "scheduler_config.json") if folder else None
  if file is None or not os.path.exists(file):
    return default
  d = read_config(os.path.dirname(file), "scheduler_config.json")
  if solver == "euler":
    return float(d.get("shift", default))
  if d.get("prediction_type", "flow_prediction") != "flow_prediction" or not d.get("use_flow_sigmas", True):
    raise CheckpointFormatError(f"{file}: a DPM-Solver config without flow prediction / flow sigmas "
                                f"(prediction_type={d.get('prediction_type')!r}); only SANA's flow config is "
                                f"supported")
  return float(d.get("flow_shift", default))


def _mount_vae(ckpt: common.Checkpoint) -> None:
  """Without stored vae.* tensors, a local vae_id pipeline folder's vae/ weights stand in."""
  if any(k.startswith("vae.") for k in ckpt.weights.keys()):
    return
  folder = ckpt.local_dir(ckpt.config.get("vae_id"))
  if folder is None or not os.path.isdir(os.path.join(folder, "vae")):
    raise CheckpointFormatError(f"{ckpt.path}: no 'vae.*' tensors in the checkpoint and vae_id="
                                f"{ckpt.config.get('vae_id')!r} is not a local pipeline folder with vae/")
  ckpt.weights.mount("vae.", common.open_safetensors(os.path.join(folder, "vae")))


def load(ckpt: common.Checkpoint, dtype: str) -> common.ReleasedModel:
  ckpt.kind = KIND
  d = ckpt.config
  layout = layout_of(ckpt)
  enc_prefix, sana_prefix, conn_prefix, sana_key, solver, pooling = LAYOUTS[layout]
  if sana_key not in d:
    sana_key = next(k for k in SANA_KEYS if k in d)
  _mount_vae(ckpt)
  sana = common.diffusers_part(ckpt, sana_key, "transformer", dtype)
  vae = common.diffusers_part(ckpt, "vae_id" if "vae_id" in d else sana_key, "vae", dtype)
  # transformers 5 saves SiglipVisionModel without its `vision_model.` level: both spellings load.
  aliases = ((enc_prefix + "vision_model.", enc_prefix),)
  has_encoder = any(ckpt.weights.stored(p + "embeddings.patch_embedding.weight")
                    for p in (enc_prefix + "vision_model.", enc_prefix))
  encoder = _encoder_config(ckpt, dtype) if has_encoder else None
  width, in_dim = common.stored_shape(ckpt, conn_prefix + "0.weight", "the connector's sizes")
  if width != sana.caption_channels:
    raise CheckpointFormatError(f"{ckpt.weights.file_of(conn_prefix + '0.weight')}: tensor "
                                f"{conn_prefix + '0.weight'!r} has {width} output rows, the SANA transformer's "
                                f"caption_channels is {sana.caption_channels}")
  if "solver" in d:
    solver = d["solver"]
    if solver not in SANA_SOLVERS:
      raise CheckpointFormatError(f"{ckpt.config_file}: solver={solver!r} is not one of {SANA_SOLVERS}")
  shift = float(d["shift"]) if "shift" in d else _scheduler_shift(ckpt, solver, DEFAULT_SHIFT[solver])
  pooled = int(d.get("num_pooled_tokens", pooling))
  latent_side = int(d["input_size"]) if layout == "main" and "input_size" in d else None

  keymap = {}
  for ours, index in (("fc1", 0), ("fc2", 2)):
    keymap[("connector", ours, "kernel")] = Source(f"{conn_prefix}{index}.weight", "linear")
    keymap[("connector", ours, "bias")] = Source(f"{conn_prefix}{index}.bias", "bias")
  keymap[("connector", "norm", "scale")] = Source(f"{conn_prefix}3.weight")
  keymap.update(common.nest(sana_family.keymap(sana), ("transformer",), sana_prefix))
  keymap.update(common.nest(dcae_family.keymap(vae), ("vae",), "vae."))
  if encoder is not None:
    keymap.update(common.nest(vision_family.keymap(encoder), ("encoder",), enc_prefix))

  def make():
    rngs = nnx.Rngs(0)
    return SanaFeatureDecoder(
        CondProjection(in_dim, width, dtype=dtype, param_dtype=dtype, rngs=rngs),
        SanaTransformer(sana, rngs=rngs), AutoencoderDC(vae, rngs=rngs),
        VisionTransformer(encoder, rngs=rngs) if encoder is not None else None,
        solver=solver, shift=shift, num_pooled_tokens=pooled if pooled > 0 else None,
        latent_side=latent_side)

  decoder = common.load(make, keymap, ckpt.weights, dtype, aliases)
  notes = [f"an image reconstructor, not a generator: features -> pixels ({layout} layout, solver {solver}, "
           f"shift {shift}); use r.pixel_decoder.reconstruct(images, rng) or .decode(features, ...)",
           "which scheduler the weights were trained for is UNCONFIRMED (overrides={'solver': ..., 'shift': ...})"]
  if encoder is None:
    notes.append("no encoder.* tensors: encode()/reconstruct() unavailable, decode() takes given features")
  return common.ReleasedModel(
      model=decoder, kind=KIND, path=ckpt.path, can_generate=False, can_answer=False, can_edit=False,
      tokenizer_dir=None, sampling=dict(num_steps=NUM_STEPS, guidance=GUIDANCE), pixel_decoder=decoder,
      pixel_decoder_dir=ckpt.path, notes=tuple(notes), unused=ckpt.weights.unused())


def load_directory(path: str, *, dtype: str = "float32", overrides=None):
  """`SanaFeatureDecoder.from_directory`: the release's directory -> the decoder."""
  from jaxmodels.unified.released import from_pretrained
  r = from_pretrained(path, dtype=dtype, overrides=overrides)
  if r.kind != KIND:
    raise CheckpointFormatError(f"{os.path.join(path, 'config.json')}: a {r.kind} release, not BLIP3-o's "
                                f"SigLIP2_SANA reconstructor")
  return r.model

