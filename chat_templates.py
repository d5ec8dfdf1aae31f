"""Chat templates: a list of messages -> the one prompt string a chat-tuned model was trained on.

A message is {"role": "system" | "user" | "assistant", "content": str}. Three formats, each a pure
function messages -> str (special tokens appear as text; tokenizer.Tokenizer.encode_chat parses
them into their ids):
    chatml  <|im_start|>{role}\\n{content}<|im_end|>\\n ... <|im_start|>assistant\\n
            (SmolLM2, Allal et al. 2025, arXiv:2502.02737; its template adds a default system turn
            when the first is not one)
    llama3  <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>...
            <|start_header_id|>assistant<|end_header_id|>\\n\\n      (content stripped; Meta's
            ChatFormat, Grattafiori et al. 2024, arXiv:2407.21783)
    llama2  <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s><s>[INST] ...
            (the system turn folded into the first user turn; Meta's chat_completion, Touvron et
            al. 2023, arXiv:2307.09288)
add_generation_prompt=True ends the string where the assistant's answer begins.
`chat_format_from_template` tells which format a Jinja template (GGUF `tokenizer.chat_template`,
tokenizer_config.json `chat_template`) renders, from the special tokens it spells.

Tests: tests/test_tokenizer.py (ChatML == jinja2 on the GGUF's own template; Llama 3 == jinja2 on
Meta's template and == Meta's ChatFormat ids; Llama 2 == Meta's chat_completion ids; bad messages
are one-line errors).
"""
import re


def _check_messages(messages):
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("chat messages: expected a non-empty list of {'role', 'content'} dicts")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise ValueError(f"chat messages: {m!r} is not a dict with string 'role' and 'content'")


def render_chatml(messages, add_generation_prompt=True, default_system=None):
    """ChatML as SmolLM2's template renders it (default system turn when the first isn't one)."""
    _check_messages(messages)
    parts = []
    if default_system is not None and messages[0]["role"] != "system":
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def render_llama3(messages, add_generation_prompt=True):
    """Llama 3 headers, as Meta's ChatFormat and the Llama 3 Instruct template (content trimmed)."""
    _check_messages(messages)
    parts = ["<|begin_of_text|>"]
    parts += [f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
              for m in messages]
    if add_generation_prompt:
        parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def render_llama2(messages, add_generation_prompt=True):
    """Llama 2 chat as Meta's chat_completion builds it; always ends open after [/INST]."""
    _check_messages(messages)
    messages = list(messages)
    if messages[0]["role"] == "system" and len(messages) > 1:    # system folded into turn 1
        system, first = messages[0]["content"], messages[1]
        messages = [{**first, "content": f"<<SYS>>\n{system}\n<</SYS>>\n\n{first['content']}"},
                    *messages[2:]]
    roles = [m["role"] for m in messages]
    if roles[::2] != ["user"] * len(roles[::2]) or roles[1::2] != ["assistant"] * len(roles[1::2]):
        raise ValueError("chat messages: Llama 2 chat needs (system), user, assistant, user, ... "
                         f"turns; got roles {roles}")
    parts = [f"<s>[INST] {q['content'].strip()} [/INST] {a['content'].strip()} </s>"
             for q, a in zip(messages[::2], messages[1::2])]
    if len(messages) % 2 == 1:
        parts.append(f"<s>[INST] {messages[-1]['content'].strip()} [/INST]")
    return "".join(parts)


CHAT_RENDERERS = {"chatml": render_chatml, "llama3": render_llama3, "llama2": render_llama2}

# render_llama2 as Jinja (meta-llama/Llama-2-7b-chat-hf tokenizer_config.json): what an export of a
# SentencePiece model carries (gguf_writer.own_chat_template), as Llama 2 tokenizer.model has none
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")


def chat_format_from_template(template):
    """(format name or None, default system message or None) read from a Jinja chat template."""
    if not template:
        return None, None
    if "<|im_start|>" in template:
        match = re.search(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", template, re.DOTALL)
        return "chatml", (match.group(1) if match else None)
    if "<|start_header_id|>" in template:
        return "llama3", None
    if "[INST]" in template:
        return "llama2", None
    return None, None
