"""input_pipeline.tokenizers: tokenizer.json loading, chat formats checked against transformers'
rendering of the real Hugging Face templates, and the ShapesWorld WordTokenizer.

The templates below are the models' published `chat_template`s, copied verbatim:
  * LLAMA3: meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json.
  * LLAMA32: meta-llama/Llama-3.2-3B-Instruct (llama.cpp models/templates/
    meta-llama-Llama-3.2-3B-Instruct.jinja); Llama-3.1's differs only in tool handling.
  * QWEN25: Qwen/Qwen2.5-*-Instruct tokenizer_config.json.
  * QWEN25VL: Qwen/Qwen2.5-VL-*-Instruct chat_template.json (same as Qwen2-VL's).
  * QWEN3: Qwen/Qwen3-* tokenizer_config.json.
  * PHI35: microsoft/Phi-3.5-mini-instruct (llama.cpp models/templates/
    microsoft-Phi-3.5-mini-instruct.jinja).
"""
import json

import pytest

from input_pipeline import tokenizers as tk

LLAMA3 = r"""{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"""

LLAMA32 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

QWEN25 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

QWEN25VL = "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"  # noqa: E501

QWEN3 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

PHI35 = "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"  # noqa: E501

# name, real template, (bos, eos, pad) as in the model's tokenizer_config, our format, options
FAMILIES = {
    "llama3": (LLAMA3, ("<|begin_of_text|>", "<|eot_id|>", None), "llama3", {}),
    "llama3.2": (LLAMA32, ("<|begin_of_text|>", "<|eot_id|>", None), "llama3.1",
                 {"date_string": "26 Jul 2024"}),
    "qwen2.5": (QWEN25, (None, "<|im_end|>", "<|endoftext|>"), "qwen2.5", {}),
    "qwen2.5-vl": (QWEN25VL, (None, "<|im_end|>", "<|endoftext|>"), "qwen2", {}),
    "qwen3": (QWEN3, (None, "<|im_end|>", "<|endoftext|>"), "qwen3", {}),
    "qwen3-nothink": (QWEN3, (None, "<|im_end|>", "<|endoftext|>"), "qwen3",
                      {"enable_thinking": False}),
    "phi3.5": (PHI35, ("<s>", "<|endoftext|>", "<|endoftext|>"), "phi3", {}),
}

SPECIALS = ["<unk>", "<s>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|system|>", "<|user|>",
            "<|assistant|>", "<|end|>", "<think>", "</think>", "<image>"]

CONVERSATIONS = [
    [{"role": "user", "content": "What colour is the bus?"}],
    [{"role": "system", "content": "  Be brief. "}, {"role": "user", "content": "<image>\nWhat colour is the bus?"},
     {"role": "assistant", "content": " White and red.\n"}, {"role": "user", "content": "And the sky?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello!"},
     {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}],
]


def build_tokenizer_dir(path, template=None, specials=("<|begin_of_text|>", "<|eot_id|>", None),
                        special_tokens_map=None):
  """A tiny byte-level BPE tokenizer.json (+ tokenizer_config.json) written with `tokenizers`."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  corpus = ["What colour is the bus? The bus is white and red. And the sky? Be brief. Hello!",
            "system user assistant a red circle left of a blue square"] * 4
  tok.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=420, special_tokens=SPECIALS, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  path.mkdir(parents=True, exist_ok=True)
  tok.save(str(path / "tokenizer.json"))
  bos, eos, pad = specials
  config = {"bos_token": bos, "eos_token": {"content": eos, "__type": "AddedToken"}, "pad_token": pad,
            "unk_token": "<unk>", "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 4096}
  if template is not None:
    config["chat_template"] = template
  (path / "tokenizer_config.json").write_text(json.dumps(config))
  if special_tokens_map is not None:
    (path / "special_tokens_map.json").write_text(json.dumps(special_tokens_map))
  return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  return build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "llama3", LLAMA3)


def test_load_tokenizer_encode_decode_and_special_ids(tok_dir):
  tok = tk.load_tokenizer(tok_dir)
  assert tok.chat_format == "llama3"
  text = "What colour is the bus? A red circle."
  ids = tok.encode(text)
  assert ids and all(isinstance(i, int) for i in ids)
  assert tok.decode(ids) == text
  assert tok.bos_token == "<|begin_of_text|>" and tok.bos_id == tok.token_to_id("<|begin_of_text|>")
  assert tok.eos_id == tok.token_to_id("<|eot_id|>") and tok.pad_id is None
  assert tok.unk_id == 0 and tok.image_id == tok.token_to_id("<image>")
  assert tok.vocab_size == len(tok.tokenizer.get_vocab()) > len(SPECIALS) + 256
  assert tok.encode(text, add_bos=True, add_eos=True) == [tok.bos_id] + ids + [tok.eos_id]
  # Special tokens written in the text become single ids.
  assert tok.encode("<|im_start|><image>") == [tok.token_to_id("<|im_start|>"), tok.image_id]
  assert tok.decode([tok.bos_id] + ids, skip_special_tokens=True) == text
  assert tk.load_tokenizer(tok_dir / "tokenizer.json").bos_id == tok.bos_id  # configs beside it


def test_special_tokens_map_overrides_config(tmp_path):
  d = build_tokenizer_dir(tmp_path / "t", None, special_tokens_map={"pad_token": "<|endoftext|>",
                                                                     "eos_token": {"content": "<|im_end|>"}})
  tok = tk.load_tokenizer(d)
  assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
  assert tok.chat_format is None
  with pytest.raises(tk.TokenizerError, match="no chat format detected"):
    tok.apply_chat_template([{"role": "user", "content": "Hi"}])
  assert tk.load_tokenizer(d, chat_format="qwen").chat_format == "qwen2"


EXPECTED = {
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama3.1": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "qwen": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "phi3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
            "<|assistant|>\n",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_chat_formats_render_exact_strings(name):
  messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}]
  assert tk.render_chat(messages, name) == EXPECTED[name]
  user_only = [{"role": "user", "content": "Hi"}]
  assert tk.render_chat(user_only, "qwen2") == (
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
      "<|im_start|>assistant\n")
  assert tk.render_chat(user_only, "qwen2.5").startswith(
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>")
  assert tk.render_chat(user_only, "phi3", add_generation_prompt=False) == "<|user|>\nHi<|end|>\n<|endoftext|>"
  assert tk.render_chat(user_only, "qwen3", enable_thinking=False).endswith(
      "<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chat_formats_match_transformers_on_the_real_templates(tmp_path, family):
  transformers = pytest.importorskip("transformers")
  template, specials, fmt, options = FAMILIES[family]
  d = build_tokenizer_dir(tmp_path / family, template, specials)
  ours = tk.load_tokenizer(d)
  assert ours.chat_format == fmt                     # detected from the template
  theirs = transformers.PreTrainedTokenizerFast.from_pretrained(str(d))
  for messages in CONVERSATIONS:
    for gen in (True, False):
      want = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                        **options)
      got = ours.apply_chat_template(messages, add_generation_prompt=gen, **options)
      assert got == want, (family, messages, gen)
      assert ours.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True,
                                      **options) == ours.encode(want)


@pytest.mark.parametrize("fmt", ["llama3", "qwen2", "qwen3", "phi3"])
def test_encode_chat_masks_assistant_tokens(tok_dir, fmt):
  tok = tk.load_tokenizer(tok_dir)
  messages = CONVERSATIONS[2]
  ids, mask = tok.encode_chat(messages, chat_format=fmt)
  assert ids == tok.encode(tok.apply_chat_template(messages, False, chat_format=fmt))
  assert len(mask) == len(ids)
  target = tok.decode([i for i, m in zip(ids, mask) if m])
  end = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "phi3": "<|end|>"}[fmt]
  think = "<think>\n\n</think>\n\n" if fmt == "qwen3" else ""
  assert target == f"{think}Hello!{end}"


def test_chat_errors(tok_dir):
  tok = tk.load_tokenizer(tok_dir)
  with pytest.raises(tk.TokenizerError, match=r"messages\[1\]: role 'bot'"):
    tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}])
  with pytest.raises(tk.TokenizerError, match=r"messages\[0\]: content must be a string"):
    tok.apply_chat_template([{"role": "user", "content": None}])
  with pytest.raises(tk.TokenizerError, match="chat_format='vicuna'"):
    tok.apply_chat_template([{"role": "user", "content": "a"}], chat_format="vicuna")
  with pytest.raises(tk.TokenizerError, match="unsupported option"):
    tok.apply_chat_template([{"role": "user", "content": "a"}], chat_format="llama3",
                            enable_thinking=False)
  # With the folder's own template, extra keywords are template variables (as in transformers).
  assert tok.apply_chat_template([{"role": "user", "content": "a"}], enable_thinking=False) == (
      tok.apply_chat_template([{"role": "user", "content": "a"}], chat_format="llama3"))


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(tk.TokenizerError) as err:
    tk.load_tokenizer(tmp_path)
  assert str(tmp_path / "tokenizer.json") in str(err.value)
  (tmp_path / "tokenizer.json").write_text('{"version": "1.0"')
  with pytest.raises(tk.TokenizerError, match="not valid JSON"):
    tk.load_tokenizer(tmp_path)
  (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
  with pytest.raises(tk.TokenizerError, match="not a Hugging Face tokenizer.json"):
    tk.load_tokenizer(tmp_path)


# ------------------------------------------------------------------------------------------------
# WordTokenizer
# ------------------------------------------------------------------------------------------------
WORDS = ["is", "there", "a", "red", "blue", "circle", "square", "left", "of", "the", "?", ".", "yes",
         "how", "many", "shapes", "are", "2"]


def test_word_tokenizer_ids_and_round_trip():
  tok = tk.WordTokenizer(WORDS, extra_tokens=["<sep>", "<IMG_GEN>"])
  assert [tok.token_to_id(t) for t in ("<pad>", "<bos>", "<eos>", "<unk>", "<image>")] == [0, 1, 2, 3, 4]
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.image_id) == (0, 1, 2, 3, 4)
  assert tok.token_to_id("<sep>") == 5 and tok.token_to_id("<IMG_GEN>") == 6
  assert tok.vocab_size == 7 + len(WORDS)
  text = "Is there a red circle left of the blue square?"
  ids = tok.encode(text, add_bos=True, add_eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.unk_id not in ids
  assert tok.decode(ids, skip_special_tokens=True) == text.lower()
  assert tok.decode(tok.encode("<image> How many shapes are there? 2.")) == (
      "<image> how many shapes are there? 2.")
  assert tok.split("<IMG_GEN>Yes,red") == ["<IMG_GEN>", "yes", ",", "red"]


def test_word_tokenizer_unknown_words():
  tok = tk.WordTokenizer(WORDS)
  ids = tok.encode("Is there a GREEN hexagon?")
  assert ids == [tok.token_to_id("is"), tok.token_to_id("there"), tok.token_to_id("a"),
                 tok.unk_id, tok.unk_id, tok.token_to_id("?")]
  assert tok.decode(ids) == "is there a <unk> <unk>?"
  assert tok.decode([999]) == "<unk>"


def test_word_tokenizer_save_load_and_from_texts(tmp_path):
  tok = tk.WordTokenizer.from_texts(["a red circle", "a blue circle", "a red square!"],
                                    extra_tokens=["<sep>"])
  assert tok.tokens[6:9] == ["a", "circle", "red"]   # most frequent first, then alphabetical
  path = tmp_path / "words.json"
  tok.save(path)
  again = tk.WordTokenizer.load(path)
  assert again.tokens == tok.tokens and again.encode("A red square!") == tok.encode("a red square!")
  assert isinstance(tk.load_tokenizer(path), tk.WordTokenizer)
  bad = json.loads(path.read_text())
  bad["tokens"][0] = "<PAD>"
  (tmp_path / "bad.json").write_text(json.dumps(bad))
  with pytest.raises(tk.TokenizerError) as err:
    tk.WordTokenizer.load(tmp_path / "bad.json")
  assert "bad.json" in str(err.value) and "'tokens'" in str(err.value)
  with pytest.raises(tk.TokenizerError, match="not a single word"):
    tk.WordTokenizer(["red circle"])
