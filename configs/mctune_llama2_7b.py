r"""MCTune (arXiv 2406.16229): instruction tuning with linguistic-complexity controls in the input.

The paper's recipe: Llama-2-7B, full fine-tune on control-tagged Alpaca-style data, 5 epochs, lr
2e-5; a random 1-5 of the 14 controls per example at the response's true values
(input_pipeline/mctune/). Full size: Llama-2-7B's shape (32 layers, 4096 wide, 32 heads, 32k vocab,
RoPE θ 1e4, 4k context), bf16, scanned + remat layers, FSDP over the devices; load Llama-2 weights
with `--config.init.hf.llm=/path/to/Llama-2-7b-hf` (jaxmodels.hf) and its tokenizer with
`--config.data.tokenizer=/path/to/Llama-2-7b-hf`. The paper's epochs: total_steps =
5 × len(data) / batch_size (set --config.train.total_steps). `:tiny` trains a 2-layer model from
scratch on the generated ShapesWorld description corpus (data.corpus="shapes") on a laptop CPU;
`:controls=False` is the same run without tags (the baseline the demo compares against). The tiny
variant uses the short meta instruction (data.meta="short": the tag definitions left out, ours) so
prompts fit its 224-token rows.

    python train.py --config=configs/mctune_llama2_7b.py --workdir=runs/mctune_7b \
        --config.data.path=alpaca_data.json --config.data.tokenizer=/ckpt/Llama-2-7b-hf \
        --config.init.hf.llm=/ckpt/Llama-2-7b-hf --config.train.total_steps=8100
    python train.py --config=configs/mctune_llama2_7b.py:tiny --workdir=runs/mctune_tiny
    python evaluate.py --config=configs/mctune_llama2_7b.py:tiny --checkpoint=runs/mctune_tiny \
        --out=runs/mctune_tiny/eval --evals=mctune
"""
import ml_collections

from jaxmodels.config_schema import base_config, data_block
from jaxmodels.config_utils import parse_arg

LLAMA2_7B = dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                 num_heads=32, num_kv_heads=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                 max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
TINY_LM = dict(model_type="llama", vocab_size=1536, hidden_size=128, intermediate_size=256, num_layers=2,
               num_heads=4, num_kv_heads=2, rope_theta=10000.0, max_position_embeddings=512, bos_token_id=1,
               eos_token_id=2, pad_token_id=0)


def get_config(arg=None):
  a = parse_arg(arg, tiny=False, runlocal=False, controls=True, seed=0, steps=0)
  c = base_config()
  c.seed = a.seed
  tiny = a.tiny or a.runlocal
  llm = dict(TINY_LM, scan_layers=True, remat="none") if tiny else \
      dict(LLAMA2_7B, scan_layers=True, remat="full", dtype="bfloat16")
  c.model = ml_collections.ConfigDict(dict(type="lm", llm=llm))
  c.data = data_block("mctune", controls=a.controls, meta="short" if tiny else "paper",
                      test_size=100 if tiny else 1000, max_length=224 if tiny else 1024,
                      batch_size=16 if tiny else 64)
  if tiny:
    c.data.corpus = "shapes"    # the generated demo corpus; --config.data.corpus=none reads data.path
  # The repo's optimizer: AdamW, lr 2e-5, 3% warmup, cosine (Alpaca's recipe); tiny from scratch: 1e-3.
  c.optim.update(lr=1e-3 if tiny else 2e-5, warmup_steps=30 if tiny else 100, weight_decay=0.0, b2=0.99)
  c.train.update(total_steps=a.steps or (600 if tiny else 8100), log_every=50,
                 ckpt_every=200 if tiny else 1000)
  c.evals = ml_collections.ConfigDict(dict(which="",   # no ShapesWorld evals; --evals=mctune scores it
                                           mctune_seed=0, mctune_cases=None,
                                           mctune_max_new_tokens=96 if tiny else 512, batch_size=50 if tiny else 16))
  if a.runlocal:      # a smoke run: seconds
    c.data.update(corpus_size=60, test_size=4, test_per_example=2, batch_size=8)
    c.train.update(total_steps=a.steps or 3, log_every=1, ckpt_every=3)
    c.optim.warmup_steps = 1
    c.evals.update(mctune_max_new_tokens=8, batch_size=8)
  return c
