"""input_pipeline.chat_template: the real chat templates of our model families rendered with Jinja,
checked against transformers' `apply_chat_template(..., tokenize=False)` on a tiny tokenizer built
here (no download); the loader's template lookup, fallback and errors; a run's copy of its tokenizer.

The templates are files under tests/data/chat_templates/ (sources and licences in its README.md).
"""
import json
import os
import shutil

import pytest

from input_pipeline import chat_template as ct
from input_pipeline import tokenizers as tk

DATA = os.path.join(os.path.dirname(__file__), "data", "chat_templates")

# family: (template file, (bos, eos, pad) as in the model's tokenizer config, built-in format it
# resembles, template-variable sets to render with)
FAMILIES = {
    "llama3.1": ("meta-llama-Llama-3.1-8B-Instruct.jinja", ("<|begin_of_text|>", "<|eot_id|>", None),
                 "llama3.1", [{}, {"date_string": "03 Dec 2026"}]),
    "llama3.2": ("meta-llama-Llama-3.2-3B-Instruct.jinja", ("<|begin_of_text|>", "<|eot_id|>", None),
                 "llama3.1", [{"date_string": "26 Jul 2024"}, {}]),   # {}: strftime_now's date
    "qwen2.5": ("Qwen-Qwen2.5-7B-Instruct.jinja", (None, "<|im_end|>", "<|endoftext|>"), "qwen2.5",
                [{}]),
    "qwen2.5-vl": ("Qwen-Qwen2.5-VL-7B-Instruct.jinja", (None, "<|im_end|>", "<|endoftext|>"), "qwen2",
                   [{}]),
    "qwen3": ("Qwen-Qwen3-0.6B.jinja", (None, "<|im_end|>", "<|endoftext|>"), "qwen3",
              [{}, {"enable_thinking": False}, {"enable_thinking": True}]),
    "phi3.5": ("microsoft-Phi-3.5-mini-instruct.jinja", ("<s>", "<|endoftext|>", "<|endoftext|>"), "phi3",
               [{}]),
}

SPECIALS = ["<unk>", "<s>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|system|>", "<|user|>",
            "<|assistant|>", "<|end|>", "<image>"]
PLAIN_ADDED = ["<think>", "</think>"]   # added but not special, as in Qwen3's tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "What colour is the bus?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "  Answer in one word. "},
     {"role": "user", "content": "<image>\nWhat colour is the bus?"},
     {"role": "assistant", "content": " White and red.\n"}, {"role": "user", "content": "And the sky?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello!"},
     {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}],
    [{"role": "user", "content": "Think first."},
     {"role": "assistant", "content": "Done.", "reasoning_content": "Step one. Step two."},
     {"role": "user", "content": "Ünïcödé & <tags> \"quoted\""}],
]


def read_template(name):
  with open(os.path.join(DATA, name), encoding="utf-8") as f:
    return f.read()


def build_dir(path, template=None, specials=(None, "<|im_end|>", None), *, jinja_file=None,
              extra_config=None):
  """A tiny byte-level BPE tokenizer.json + tokenizer_config.json written with `tokenizers`."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  corpus = ["What colour is the bus? White and red. And the sky? Be brief. Hello! Bye. Hi",
            "system user assistant Answer in one word. Think first. Done. Step one. Step two."] * 4
  tok.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=400, special_tokens=SPECIALS, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED])
  path.mkdir(parents=True, exist_ok=True)
  tok.save(str(path / "tokenizer.json"))
  bos, eos, pad = specials
  config = {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": "<unk>",
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096,
            **(extra_config or {})}
  if template is not None:
    config["chat_template"] = template
  (path / "tokenizer_config.json").write_text(json.dumps(config))
  if jinja_file is not None:
    (path / "chat_template.jinja").write_text(jinja_file)
  return path


def hf_tokenizer(path):
  transformers = pytest.importorskip("transformers")
  return transformers.PreTrainedTokenizerFast.from_pretrained(str(path))


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("families")
  return {name: build_dir(root / name, read_template(f), specials)
          for name, (f, specials, _, _) in FAMILIES.items()}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_real_templates_render_as_transformers_does(family_dirs, family):
  _, _, fmt, option_sets = FAMILIES[family]
  ours = tk.load_tokenizer(family_dirs[family])
  theirs = hf_tokenizer(family_dirs[family])
  assert ours.chat_template is not None and ours.chat_format == fmt
  for messages in CONVERSATIONS:
    for gen in (True, False):
      for options in option_sets:
        want = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                          **options)
        got = ours.apply_chat_template(messages, add_generation_prompt=gen, **options)
        assert got == want, (family, messages, gen, options)
        assert ours.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True,
                                        **options) == ours.encode(want)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_template_targets_match_the_built_in_format(family_dirs, family):
  """Assistant-token masks from the template (prefix rendering + end-of-turn token) equal the ones
  of the hand-coded format of the same family, whose rendering is pinned by tests/test_tokenizers.py."""
  _, _, fmt, option_sets = FAMILIES[family]
  opts = option_sets[0]                    # llama3.2: the built-in format's date, not today's
  tok = tk.load_tokenizer(family_dirs[family])
  for messages in CONVERSATIONS[2:5]:
    msgs = [{k: v for k, v in m.items() if k in ("role", "content")} for m in messages]
    ids, mask = tok.encode_chat(msgs, **opts)
    assert (ids, mask) == tok.encode_chat(msgs, chat_format=fmt, **opts), (family, msgs)
    assert ids == tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=False, **opts))
    assert tok.encode_chat_with_images(msgs, **opts) == tok.encode_chat_with_images(
        msgs, chat_format=fmt, **opts)
  target = tok.decode([i for i, m in zip(*tok.encode_chat(CONVERSATIONS[3], **opts)) if m])
  end = {"llama3.1": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>",
         "phi3": "<|end|>"}[fmt]
  think = "<think>\n\n</think>\n\n" if family == "qwen3" else ""
  assert target == f"{think}Hello!{end}"


def test_environment_matches_transformers(tmp_path):
  """tojson (no HTML escaping, indent, sort_keys), loop controls, trim/lstrip blocks, namespace,
  dict(), strftime_now, raise_exception and reasoning aliases behave as in transformers."""
  template = (
      "{%- set ns = namespace(n=0) %}\n"
      "{%- for m in messages %}\n"
      "  {%- if m.role == 'user' and m.content == 'stop' %}{% break %}{% endif %}\n"
      "  {%- if m.role == 'system' %}{% continue %}{% endif %}\n"
      "  {%- set ns.n = ns.n + 1 %}\n"
      "  {{ m | tojson }}|{{ m | tojson(indent=2, sort_keys=True) }}\n"
      "  {% if m.thinking is defined %}T={{ m.thinking }};{{ m.reasoning_content }}{% endif %}\n"
      "{%- endfor %}\n"
      "{{ ns.n }} {{ dict(a=1) | tojson }} {{ strftime_now('%Y') }} {{ bos_token }}|{{ eos_token }}\n"
      "{%- if add_generation_prompt %}<gen>{% endif %}")
  d = build_dir(tmp_path / "env", template, ("<s>", "<|endoftext|>", None))
  ours, theirs = tk.load_tokenizer(d), hf_tokenizer(d)
  messages = [{"role": "system", "content": "sys"},
              {"role": "user", "content": "Ünï <b>&</b> \"q\"", "name": None},
              {"role": "assistant", "content": "ok", "reasoning": "why"},
              {"role": "user", "content": "stop"}, {"role": "user", "content": "never"}]
  for gen in (True, False):
    want = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    assert ours.apply_chat_template(messages, add_generation_prompt=gen) == want
  assert "\\u" not in want and "&lt;" not in want and "T=why;why" in want

  raising = tk.load_tokenizer(build_dir(tmp_path / "raise", "{{ raise_exception('no system here') }}"))
  with pytest.raises(tk.TokenizerError, match=r"tokenizer_config.json: .*no system here") as info:
    raising.apply_chat_template([{"role": "user", "content": "Hi"}])
  assert "\n" not in str(info.value)
  sneaky = tk.load_tokenizer(build_dir(tmp_path / "sneaky", "{% set ns = namespace(_x=1) %}"))
  with pytest.raises(tk.TokenizerError, match="'_x'"):
    sneaky.apply_chat_template([{"role": "user", "content": "Hi"}])
  escape = tk.load_tokenizer(build_dir(tmp_path / "escape", "{{ messages.__class__.__mro__ }}"))
  with pytest.raises(tk.TokenizerError):
    escape.apply_chat_template([{"role": "user", "content": "Hi"}])


def test_generation_blocks_mark_targets(tmp_path):
  template = ("{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}"
              "{{ m.content }}</a>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}")
  tpl = ct.ChatTemplate(template, origin="inline")
  assert tpl.has_generation_blocks
  text, spans = tpl.render_with_spans(CONVERSATIONS[4])
  assert text == tpl.render(CONVERSATIONS[4])
  assert [text[a:b] for a, b in spans] == ["<think>\nhmm\n</think>\n\nHello!</a>", "Bye.</a>"]


def test_template_lookup_order_and_named_templates(tmp_path):
  qwen = read_template("Qwen-Qwen2.5-7B-Instruct.jinja")
  phi = read_template("microsoft-Phi-3.5-mini-instruct.jinja")
  hi = [{"role": "user", "content": "Hi"}]
  # chat_template.jinja wins over tokenizer_config.json's chat_template, as in transformers.
  d = build_dir(tmp_path / "both", qwen, jinja_file=phi)
  tok = tk.load_tokenizer(d)
  assert tok.chat_template.origin.endswith("chat_template.jinja")
  assert tok.apply_chat_template(hi) == hf_tokenizer(d).apply_chat_template(hi, tokenize=False,
                                                                            add_generation_prompt=True)
  assert tok.apply_chat_template(hi) == "<|user|>\nHi<|end|>\n<|assistant|>\n"
  # A list of named templates: "default" is used.
  named = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": qwen}]
  tok = tk.load_tokenizer(build_dir(tmp_path / "named", named))
  assert tok.apply_chat_template(hi).startswith("<|im_start|>system\nYou are Qwen")
  with pytest.raises(tk.TokenizerError, match=r"tokenizer_config.json: no chat template named 'default'"):
    tk.load_tokenizer(build_dir(tmp_path / "nodefault", [{"name": "rag", "template": "R"}]))


def test_fallback_to_built_in_formats(tmp_path):
  hi = [{"role": "user", "content": "Hi"}]
  d = build_dir(tmp_path / "none", None)
  tok = tk.load_tokenizer(d)
  assert tok.chat_template is None and tok.chat_format is None and not tok.can_chat
  with pytest.raises(tk.TokenizerError, match="no chat format detected"):
    tok.apply_chat_template(hi)
  tok = tk.load_tokenizer(d, chat_format="qwen2.5")
  assert tok.can_chat and tok.apply_chat_template(hi) == tk.render_chat(hi, "qwen2.5")
  # An explicit chat_format is chosen over the folder's template, at load or per call.
  odd = build_dir(tmp_path / "odd", "{% for m in messages %}[{{ m.content }}]{% endfor %}")
  assert tk.load_tokenizer(odd).apply_chat_template(hi) == "[Hi]"
  assert tk.load_tokenizer(odd, chat_format="phi3").apply_chat_template(hi) == tk.render_chat(hi, "phi3")
  assert tk.load_tokenizer(odd).apply_chat_template(hi, chat_format="chatml") == tk.render_chat(hi, "chatml")


def test_malformed_template_is_one_line_naming_the_file(tmp_path):
  d = build_dir(tmp_path / "bad", "{% for m in messages %}{{ m.content }")
  with pytest.raises(tk.TokenizerError, match=r"bad/tokenizer_config.json: malformed chat template"
                                              r" \(line 1: ") as info:
    tk.load_tokenizer(d)
  assert "\n" not in str(info.value)
  d = build_dir(tmp_path / "badfile", "{{ ok }}", jinja_file="{% if x %}\nno end\n")
  with pytest.raises(tk.TokenizerError, match=r"badfile/chat_template.jinja: malformed chat template"):
    tk.load_tokenizer(d)
  with pytest.raises(tk.TokenizerError, match=r"tokenizer_config.json: chat_template must be"):
    tk.load_tokenizer(build_dir(tmp_path / "number", 42))


def test_run_carries_its_tokenizer(tmp_path):
  from ml_collections import ConfigDict

  from jaxmodels.serving.loader import run_tokenizer
  src = build_dir(tmp_path / "Qwen3-tiny", read_template("Qwen-Qwen3-0.6B.jinja"),
                  (None, "<|im_end|>", "<|endoftext|>"))
  (src / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
  (src / "chat_template.jinja").write_text(read_template("Qwen-Qwen3-0.6B.jinja"))
  (src / "model.safetensors").write_text("not a tokenizer file")
  tok = tk.load_tokenizer(src)
  workdir = tmp_path / "run"
  assert tk.save_with_run(tok, workdir) == str(workdir / "tokenizer")
  assert sorted(os.listdir(workdir / "tokenizer")) == ["chat_template.jinja", "special_tokens_map.json",
                                                       "tokenizer.json", "tokenizer_config.json"]
  shutil.rmtree(src)                       # the run no longer needs the original folder
  config = ConfigDict({"data": {"tokenizer": str(src), "chat_format": None}})
  loaded = run_tokenizer(str(workdir), config)
  assert loaded.path == str(workdir / "tokenizer" / "tokenizer.json")
  for messages in CONVERSATIONS:
    for gen in (True, False):
      assert loaded.apply_chat_template(messages, add_generation_prompt=gen) == (
          tok.apply_chat_template(messages, add_generation_prompt=gen))
    assert loaded.encode_chat(messages) == tok.encode_chat(messages)
  assert (loaded.eos_id, loaded.pad_id, loaded.vocab_size) == (tok.eos_id, tok.pad_id, tok.vocab_size)
  # config.data.chat_format still chooses a built-in format over the carried template.
  forced = run_tokenizer(str(workdir), ConfigDict({"data": {"tokenizer": str(src), "chat_format": "chatml"}}))
  assert forced.apply_chat_template(CONVERSATIONS[1]) == tk.render_chat(CONVERSATIONS[1], "chatml")
  # A resumed run keeps its copy; a WordTokenizer has nothing to copy (it lives in tokenizer.json).
  assert tk.save_with_run(loaded, workdir) == str(workdir / "tokenizer")
  assert tk.save_with_run(tk.WordTokenizer(["a"]), tmp_path / "words") is None
  assert not (tmp_path / "words").exists()
