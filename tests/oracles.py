"""Helpers that build random tiny PyTorch oracles (transformers / diffusers) and save them."""
from __future__ import annotations

import numpy as np


def perturb_(module, scale: float = 0.05, seed: int = 0):
  """Adds noise to every parameter so biases, norms and heads are not left at their init values."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
  return module


def save_tiny(model, tmp_path) -> str:
  path = str(tmp_path)
  model.save_pretrained(path)
  return path


def torch_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  import torch
  with torch.no_grad():
    kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
    return model(torch.tensor(ids), **kw).logits.float().numpy()


def nchw(x: np.ndarray):
  import torch
  return torch.tensor(x).permute(0, 3, 1, 2)


def write_word_tokenizer(path, words, *, specials=(), chat_template=None, eos="<|im_end|>") -> None:
  """A word-level Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) over `specials` then
  `words` (ids in that order, "[UNK]" first): stands in for a release's tokenizer in tiny replicas."""
  import json
  import os

  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {"[UNK]": 0}
  for w in list(specials) + list(words):
    vocab.setdefault(w, len(vocab))
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(list(specials))
  tok.save(os.path.join(path, "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": "[UNK]"}
  if chat_template is not None:
    config["chat_template"] = chat_template
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump(config, f)
