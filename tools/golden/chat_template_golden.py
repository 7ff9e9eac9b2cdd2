"""Golden chat-template renders (crates/llama/src/chat_template.rs), made with transformers' own renderer
(`transformers.utils.chat_template_utils.render_jinja_template`: jinja2 ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, raise_exception, strftime_now), for the SmolLM2 ChatML template and the
Llama 3.1 Instruct template in fixtures/templates/. Also the assistant spans (byte ranges of the rendered
text), found by rendering conversation prefixes: messages[:i] with a generation prompt vs messages[:i+1].

Run from the repository root:  pip install transformers jinja2 && python3 tools/golden/chat_template_golden.py
"""

import hashlib
import json
from pathlib import Path

from transformers.utils.chat_template_utils import render_jinja_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = {
    "smollm2-chatml": ("smollm2-chatml.jinja", "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
                       "<|im_start|>", "<|im_end|>"),
    "llama-3.1-instruct": ("llama-3.1-instruct.jinja", "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65",
                           "<|begin_of_text|>", "<|eot_id|>"),
}

S = lambda c: {"role": "system", "content": c}
U = lambda c: {"role": "user", "content": c}
A = lambda c: {"role": "assistant", "content": c}

CONVERSATIONS = [
    ("system+user", [S("You are a terse assistant."), U("What is the capital of France?")], True, None),
    ("system+user, no generation prompt", [S("You are a terse assistant."), U("What is the capital of France?")], False, None),
    ("no system", [U("Hi there!")], True, None),
    ("multi-turn", [S("Be brief."), U("2+2?"), A("4."), U("And 3+3?"), A("6.")], False, "01 Jan 2025"),
    ("multi-turn, no system, generation prompt", [U("Name a color."), A("Blue."), U("Another?")], True, "26 Jul 2024"),
    ("whitespace and unicode", [S("  padded system  \n"), U("\n  café 😀 你好  \n"), A("  ok  ")], False, "15 Mar 2025"),
]


def render(template, bos, eos, messages, add_generation_prompt, date_string):
    extra = {} if date_string is None else {"date_string": date_string}
    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=add_generation_prompt,
        bos_token=bos, eos_token=eos, **extra,
    )
    return rendered[0]


def main():
    cases = []
    for name, (file, sha, bos, eos) in TEMPLATES.items():
        source = (ROOT / "fixtures/templates" / file).read_text()
        assert hashlib.sha256(source.encode()).hexdigest() == sha, f"{file} changed"
        for label, messages, add_generation_prompt, date_string in CONVERSATIONS:
            text = render(source, bos, eos, messages, add_generation_prompt, date_string)
            spans = []
            if not add_generation_prompt:
                for i, m in enumerate(messages):
                    if m["role"] != "assistant":
                        continue
                    before = render(source, bos, eos, messages[:i], True, date_string).encode()
                    through = render(source, bos, eos, messages[: i + 1], False, date_string).encode()
                    assert through.startswith(before) and text.encode().startswith(through)
                    spans.append([len(before), len(through)])
            cases.append({
                "template": name, "label": label, "bos_token": bos, "eos_token": eos, "messages": messages,
                "add_generation_prompt": add_generation_prompt, "date_string": date_string,
                "expected": text, "assistant_spans": spans,
            })
    out = ROOT / "fixtures/golden/chat_templates.json"
    out.write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {out}: {len(cases)} renders")


if __name__ == "__main__":
    main()
