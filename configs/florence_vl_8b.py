"""Florence-VL 8B (spec §6): Florence-2-large-ft (DaViT + encoder) -> DBFusion (depth + 3 task prompts,
channel concat, 4×1024 -> mlp3x_gelu) -> 576 visual tokens at 768×768 -> Llama-3.1-8B-Instruct.

    python train.py --config=configs/florence_vl_8b.py --workdir=runs/florence_vl_8b            # stage 1
    python train.py --config=configs/florence_vl_8b.py:stage=2 --workdir=runs/florence_vl_8b_s2
    python train.py --config=configs/florence_vl_8b.py:tiny --workdir=/tmp/florence_vl_tiny
    (config.model.type = "florence_vl": Florence-VL's fields, which jaxmodels.unified.florence_vl.
    florence_vl_config turns into an understanding-only UnifiedModel)

Arguments: tiny (CPU-sized, same structure), stage=1|2, freeze_florence (stage 1 only),
data=llava_json|webdataset|array_record|tfds|shapes_world (the reader; captions become "describe" Q/A
pairs; default llava_json, or shapes_world with tiny so that `:tiny` runs out of the box).
Stage 1 (pretraining): trains the whole model (`--tune_entire_model true`), lr 1e-5, cosine, warmup 3%,
max length 2048, global batch 2048 (Llama). `freeze_florence` keeps Florence-2 frozen, which is what the
released code effectively does (its vision tower runs under no_grad) — UNCONFIRMED which one the paper
used. Stage 2 (instruction tuning): projector + LLM, lr 1e-5, global batch 512.

UNCONFIRMED in the spec, chosen here (config fields): the encoder states are sliced at the image slots
and Florence-2's global token is dropped (576 tokens; `dbfusion.drop_global_token`); the prompt ids must
be the Florence-2 tokenizer's ids of `dbfusion.prompts`: full configs read them from the local path
`--config.model.dbfusion.tokenizer=` (`resolve_prompt_ids`; training without it fails naming that key),
tiny configs use made-up ids; <image> is a reserved Llama-3 special token (128011).

Data (`config.data`, see input_pipeline/datasets.py): set `data.name` ("llava_json", "webdataset",
"array_record", "tfds") and `data.source` (the reader's arguments), e.g.
    --config.data.name=llava_json --config.data.source.json_path=/data/ft.json \
    --config.data.source.image_dir=/data/images --config.data.tokenizer=/ckpt/Llama-3.1-8B-Instruct
Images are padded to square with the ImageNet mean (LLaVA `image_aspect_ratio=pad`) and resized to
768×768. On shapes_world (`:tiny`) train.py scores Q/A and ColorBench (the model does not generate).
"""
import ml_collections
from ml_collections.config_dict import placeholder

from jaxmodels.config_schema import base_config, data_block, execution_block
from jaxmodels.config_utils import parse_arg
from jaxmodels.unified.dbfusion import DEFAULT_PROMPTS

# Same structure as the full model, CPU-sized: 4 DaViT stages, 2 encoder layers, 64 px -> 2×2 = 4 tokens.
TINY_FLORENCE = dict(
    preset="florence2-large",
    vision=dict(depths=(1, 1, 2, 1), embed_dim=(8, 16, 24, 32), num_heads=(1, 2, 2, 4), num_groups=(1, 2, 2, 4),
                window_size=3),     # no scan: stages of 1-2 blocks compile faster unrolled
    projection_dim=32, d_model=32, vocab_size=100, encoder_layers=2, encoder_attention_heads=4,
    encoder_ffn_dim=48, max_position_embeddings=64, max_position_embeddings_2d=20, max_temporal_embeddings=10,
    image_token_id=99, scan_layers=True)
TINY_LLM = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                num_kv_heads=2, max_position_embeddings=512, scan_layers=True, rope_scaling=None)
TINY_PROMPT_IDS = ((0, 11, 12, 13, 14, 2), (0, 21, 22, 2), (0, 31, 32, 33, 2))
FLORENCE_FROZEN = ["und_encoder/florence/.*"]


# Reader arguments per data source (config.data.source; see input_pipeline/sources.py).
DATA_SOURCES = {
    "shapes_world": {},      # the embedded dataset (`:tiny` default): ShapesWorld Q/A, <image> = id 4
    "llava_json": dict(json_path=placeholder(str), image_dir=placeholder(str)),
    "webdataset": dict(shards=placeholder(str)),
    "array_record": dict(paths=placeholder(str), image_fields=("image",)),
    "tfds": dict(name=placeholder(str), split="train", data_dir=placeholder(str), image_fields=("image",)),
}


def build(*, llm: str, image_token_id: int, tiny: bool, stage: int, freeze_florence: bool, lr: float,
          steps: int, data: str = "") -> ml_collections.ConfigDict:
  """Shared by florence_vl_3b.py / florence_vl_8b.py. `data` "" = shapes_world when tiny, else
  llava_json."""
  data = data or ("shapes_world" if tiny else "llava_json")
  if stage not in (1, 2):
    raise ValueError(f"stage must be 1 or 2, got {stage}")
  if data not in DATA_SOURCES:
    raise ValueError(f"data must be one of {sorted(DATA_SOURCES)}, got {data!r}")
  c = base_config()
  if tiny:
    llm_cfg = dict(preset=llm, **TINY_LLM)
    florence = TINY_FLORENCE
    fusion = dict(image_size=64, prompts=DEFAULT_PROMPTS, prompt_ids=TINY_PROMPT_IDS,
                  tokenizer=placeholder(str))
    # ShapesWorld rows use its WordTokenizer's <image> (4); real-data rows get the last LLM id.
    image_token = 4 if data == "shapes_world" else TINY_LLM["vocab_size"] - 1
  else:
    llm_cfg = dict(preset=llm, scan_layers=True, remat="full", dtype="bfloat16")
    florence = dict(preset="florence2-large", vision=dict(scan_layers=True, remat="full", dtype="bfloat16"),
                    scan_layers=True, dtype="bfloat16")
    # prompt_ids from Florence-2's tokenizer: --config.model.dbfusion.tokenizer=/ckpt/Florence-2-large-ft
    fusion = dict(image_size=768, prompts=DEFAULT_PROMPTS, prompt_ids=None, tokenizer=placeholder(str))
    image_token = image_token_id
  frozen = stage == 2 or freeze_florence
  c.model = ml_collections.ConfigDict(dict(
      type="florence_vl", llm=llm_cfg, florence=florence,
      dbfusion=dict(mode="channel_concat", projector="mlp3x_gelu", drop_global_token=True, frozen=frozen,
                    **fusion),
      image_token_id=image_token))
  c.model.execution = execution_block()   # --config.model.execution.remat=... sets every tower's
  c.optim.lr = 1e-3 if tiny else lr
  c.optim.warmup_steps = 3 if tiny else max(1, int(0.03 * steps))
  c.optim.min_lr_ratio = 0.0
  c.optim.frozen = FLORENCE_FROZEN if frozen else None
  c.train.total_steps = 10 if tiny else steps
  # image_aspect "pad": LLaVA's image_aspect_ratio=pad (SFT); web-scale data skips corrupt records.
  real = {} if data == "shapes_world" else dict(max_length=64 if tiny else 2048)
  c.data = data_block(data, image_aspect="pad", on_error="skip", **real)
  c.data.source = ml_collections.ConfigDict(DATA_SOURCES[data])
  c.stage = stage
  return c


def get_config(arg=None):
  a = parse_arg(arg, tiny=False, stage=1, freeze_florence=False, data="")
  # Stage 1: ~16.9M captions / 2048 per step (UNCONFIRMED count); stage 2: ~10M / 512 (UNCONFIRMED).
  steps = 8250 if a.stage == 1 else 19500
  c = build(llm="llama3.1-8b", image_token_id=128_011, tiny=a.tiny, stage=a.stage,
            freeze_florence=a.freeze_florence, lr=1e-5, steps=steps, data=a.data)
  c.data.batch_size = 8 if a.tiny else (2048 if a.stage == 1 else 512)
  return c
