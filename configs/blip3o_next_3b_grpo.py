r"""BLIP3o-NEXT 3B GRPO post-training (spec §3.4): only the AR image-token policy is updated; the frozen
SANA diffusion head renders each sampled token sequence; the reward is GenEval's verdict on the image.

    python train.py --config=configs/blip3o_next_3b_grpo.py --workdir=gs://.../blip3o_next_grpo \
        --config.init.checkpoint=gs://.../blip3o_next_sft
    python tools/plan.py --config=configs/blip3o_next_3b_grpo.py --devices=256   # memory plan
    python train.py --config=configs/blip3o_next_3b_grpo.py:tiny --workdir=/tmp/next_grpo_tiny \
        --config.init.checkpoint=/tmp/blip3o_next_tiny

Settings from the example script (spec §3.4): 16 images per prompt, KL β 0.001, lr 1e-6 with a cosine
schedule; the policy is the SFT run's model (`config.init.checkpoint`, a run of configs/blip3o_next_3b.py,
whose model this config states again: `rl.model_from_init=False`). Trainable: the LLM (the AR policy);
the image tokenizer, connector, DiT and DC-AE are frozen (they render, they are not the policy). The
reward is the GenEval verdict of the ShapesWorld prompts' exact detector (`rl.rewards.geneval`);
`rl.external` plugs in any other scorer (a real-image GenEval detector such as Mask2Former + CLIP, an
OCR reward, a reward server client).
"""

from configs import blip3o_next_3b
from jaxmodels.config_utils import parse_arg
from jaxmodels.trainer.grpo import rl_block


def get_config(arg=None):
  a = parse_arg(arg, tiny=False, llm="qwen3-1.7b")
  c = blip3o_next_3b.get_config(f"tiny={a.tiny},llm={a.llm}")
  c.rl = rl_block()   # every key declared (jaxmodels/trainer/grpo.py)
  c.rl.update(model_from_init=False, group_size=16, prompts_per_step=2 if a.tiny else 16, clip_eps=0.2,
              kl_beta=0.001, aggregate="sequence", scale="std", inner_epochs=1,
              render_steps=2 if a.tiny else 20, render_guidance=4.5 if not a.tiny else 1.0)
  c.rl.rewards = dict(geneval=1.0)
  c.optim.update(lr=1e-6, warmup_steps=0, min_lr_ratio=0.0, weight_decay=0.0)
  c.optim.frozen = ["image_tokenizer/.*", "vae/.*", "dit/.*", "connector/.*"]
  c.train.update(total_steps=4 if a.tiny else 400, log_every=1 if a.tiny else 10, eval_every=50,
                 ckpt_every=2 if a.tiny else 50)
  return c
