"""BLIP3o-NEXT 3B (spec §3): Qwen3 + discrete image tokens (65,536 codes, 3 scale tokens, <im_start>/
<im_end>) + TA-Tok-style SimVQ tokenizer; joint CE (text + image tokens) + flow loss on the
teacher-forced states of <S0> + 729 image tokens -> connector -> SANA 1.5 1.6B (1024px) over the
latents of a frozen in-model DC-AE f32c32 (1024×1024 -> 32×32×32, scaling factor 0.41407).

    python train.py --config=configs/blip3o_next_3b.py --workdir=runs/blip3o_next
    python train.py --config=configs/blip3o_next_3b.py:tiny --workdir=/tmp/blip3o_next_tiny
    python train.py --config=configs/blip3o_next_3b.py:tiny,edit --workdir=/tmp/blip3o_next_edit_tiny

Pretrained parts load through config.init = dict(hf=dict(llm=<Qwen3 dir>, vae=<diffusers AutoencoderDC
dir, e.g. SANA1.5_1.6B_1024px_diffusers/vae>, dit=<its transformer/>)) (jaxmodels.trainer.setup.initialize).

`:edit` is the editing variant (spec §3.6): the reference image's tokens fill the prompt's `<image>`
placeholders and its DC-AE latents enter the DiT condition and noise space (edit_latents, see
jaxmodels/unified/latent_codec.py for the chosen, UNCONFIRMED, equations).

UNCONFIRMED (spec §3.1), chosen here: the Qwen3 size is Qwen3-1.7B (1.7B + SANA 1.6B ≈ 3B; the repo
scripts default to Qwen3-0.6B: `:llm=qwen3-0.6b`); the tokenizer code dimension is 64; the SigLIP2
encoder is modelled by our SigLIP-so400m/14-384 preset (same shape); new embeddings use the default
init, not the mean of the old rows. Training targets are encoded in the model by the frozen DC-AE from
gen_image (set `config.model.vae = None` to feed precomputed scaled latents as batch["gen_latents"];
generate_image then returns latents); generate_image returns 1024×1024 pixels in [-1, 1].
"""
from configs import paper_common
from jaxmodels.config_utils import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, tiny=False, llm="qwen3-1.7b", edit=False)
  return paper_common.blip3o_next(llm=a.llm, tiny=a.tiny, edit=a.edit)
