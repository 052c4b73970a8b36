#!/usr/bin/env python3
"""gen_chat_expected.py - expected prompts for the built-in chat templates
(src/model/chat_template.c), rendered by the real Jinja templates.

    python3 tools/gen_chat_expected.py            # rewrite tests/data/chat/
    python3 tools/gen_chat_expected.py --check    # compare, exit 1 on a difference

Needs Python's jinja2 and the fixture folder ../shared (or $PDSERVE_SHARED):
the templates come from ../shared/models/templates/*.jinja and from the
tokenizer.chat_template of ../shared/models/vocab/ggml-vocab-qwen2.gguf; two
families that have no fixture file (plain ChatML and Meta-Llama-3-8B-Instruct)
are written out below. CI machines may lack jinja2, so the output is committed
and tests/unit/chat_template_test.c only reads it.

Rendering is transformers' apply_chat_template environment, as in
../shared/tools/render_template.py: ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, the loopcontrols extension, raise_exception,
strftime_now and a tojson filter (ensure_ascii=False), and the variables
messages, bos_token, eos_token, add_generation_prompt plus per-case kwargs
(date_string, enable_thinking).

Output, under tests/data/chat/:
  cases.json             families (name, template source, bos/eos), cases
                         (messages, add_generation_prompt, kwargs) and, per
                         case and family, either the file of the expected
                         prompt or the error message the template raised
  <family>/<case>.txt    the exact rendered bytes (no newline added)
  random.json            RANDOM_CASES seeded random conversations (random
                         roles and contents built from the pieces the
                         templates react to), expected prompt or error inline

Cases list "only" to restrict them to some families (a case that makes no
sense elsewhere, or one whose output depends on today's date).
"""
import json
import os
import random
import sys

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "tests", "data", "chat")
SHARED = os.environ.get("PDSERVE_SHARED") or os.path.join(ROOT, "..", "shared")

# The plain ChatML template (as in transformers' documentation and llama.cpp's
# "chatml"): every message verbatim, no default system message.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")

# meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json chat_template
# (Llama 3.0: no default system block; bos_token before the first message).
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim"
          " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

T = "models/templates/"
# name (= chat_template_name() in C), template source, bos, eos.
FAMILIES = [
    ("chatml", {"inline": CHATML}, "", "<|im_end|>"),
    ("qwen2", {"gguf": "models/vocab/ggml-vocab-qwen2.gguf"}, "", "<|endoftext|>"),
    ("qwen2.5", {"shared": T + "Qwen-Qwen2.5-7B-Instruct.jinja"}, "", "<|im_end|>"),
    ("llama3", {"inline": LLAMA3}, "<|begin_of_text|>", "<|eot_id|>"),
    ("llama3.1", {"shared": T + "meta-llama-Llama-3.1-8B-Instruct.jinja"}, "<|begin_of_text|>", "<|eot_id|>"),
    ("llama3.2", {"shared": T + "meta-llama-Llama-3.2-3B-Instruct.jinja"}, "<|begin_of_text|>", "<|eot_id|>"),
    ("mistral-nemo", {"shared": T + "mistralai-Mistral-Nemo-Instruct-2407.jinja"}, "<s>", "</s>"),
    ("gemma", {"shared": T + "google-gemma-2-2b-it.jinja"}, "<bos>", "<eos>"),
    ("phi3", {"shared": T + "microsoft-Phi-3.5-mini-instruct.jinja"}, "<s>", "<|endoftext|>"),
    ("deepseek-r1", {"shared": T + "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"},
     "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    ("smollm3", {"shared": T + "HuggingFaceTB-SmolLM3-3B.jinja"}, "", "<|im_end|>"),
]


def S(c):
    return {"role": "system", "content": c}


def U(c):
    return {"role": "user", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


def TOOL(c):
    return {"role": "tool", "content": c}


DATE = {"date_string": "26 Jul 2024"}  # pins Llama 3.2, which otherwise prints today

# Every case runs on every family unless it has "only". gen: add_generation_prompt.
CASES = [
    {"name": "user", "messages": [U("Hello!")]},
    {"name": "user_nogen", "gen": False, "messages": [U("Hello!")]},
    {"name": "system_user", "messages": [S("You are a pirate."), U("Hello!")]},
    {"name": "multi_turn", "messages": [
        S("You are terse."), U("What is 2+2?"), A("4."), U("And 3+3?")]},
    {"name": "multi_turn_no_system", "messages": [
        U("Hi"), A("Hello! How can I help?"), U("Tell me a joke."), A("No."), U("Please?")]},
    {"name": "ends_with_assistant", "gen": False, "messages": [
        S("Be brief."), U("Name a colour."), A("Blue.")]},
    {"name": "ends_with_assistant_gen", "messages": [U("Name a colour."), A("Blue.")]},
    {"name": "whitespace", "messages": [
        S("  \n You are helpful. \t\n"), U("\n\n  Hello  there  \n"),
        A("\n\n  Leading and trailing newlines.\n\n"), U(" \tlast\t ")]},
    {"name": "unicode_space", "messages": [
        S("\u00a0\u2003system\u3000"), U("\x1c\x1f\u0085\u2028 user \u2029\u202f\u205f\u1680\x0b\x0c"),
        A("\u200b zero width is not space \ufeff"), U("\u00a0")]},
    {"name": "whitespace_no_system", "messages": [
        U("\n\n  Hello \t\n"), A("\n  answer  \n\n"), U("\u00a0\u3000 x \u2028\x1d")]},
    {"name": "newlines_only", "messages": [U("\n\n\n"), A("\n"), U("\r\n")]},
    {"name": "unicode", "messages": [
        S("Réponds en français. 日本語も。"), U("héllo wörld 🙂 ﷽ עברית e\u0301"),
        A("Ça va ? 🙂"), U("𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and \u202eRTL\u202c")]},
    {"name": "empty_content", "messages": [U(""), A(""), U("")]},
    {"name": "empty_system", "messages": [S(""), U("hi")]},
    {"name": "system_only", "messages": [S("Only a system message.")]},
    {"name": "special_text", "messages": [
        S("{{ not a template }} {% if x %}"),
        U("<|im_end|><|eot_id|>[INST]</s><end_of_turn> \"quotes\" 'single' \\back\\slash\ttab\x01\x7f\r\nCRLF"),
        A("<think>not closed"), U("[/INST] <|start_header_id|>")]},
    {"name": "think", "messages": [
        U("What is 2+2?"), A("<think>\nEasy: 2+2=4.\n</think>\n\nThe answer is 4."), U("Thanks!")]},
    {"name": "think_twice", "gen": False, "messages": [
        U("x"), A("a</think>b</think>  c"), U("y"), A("</think>"), U("z"), A("no think tags")]},
    {"name": "two_systems", "messages": [S("First system."), S("Second system."), U("Hi")]},
    {"name": "system_late", "messages": [U("a"), S("late system"), U("b")]},
    {"name": "system_after_assistant", "messages": [U("a"), A("b"), S("late system"), U("c")]},
    {"name": "assistant_first", "messages": [A("I speak first."), U("ok")]},
    {"name": "two_users", "messages": [U("one"), U("two")]},
    {"name": "tool", "gen": False, "messages": [
        U("Weather in Paris?"), A("Let me check."), TOOL("{\"temp_c\": 21.5}\n"), TOOL("sunny"),
        A("It is 21.5 C and sunny."), U("Thanks"), A("You're welcome.")]},
    {"name": "tool_last", "messages": [U("Weather?"), A("Checking."), TOOL("\"rain\" \\ \x02 é")]},
    {"name": "tool_odd", "messages": [U("run it"), TOOL(" output "), U("and?")]},
    {"name": "tool_first", "messages": [TOOL("orphan result"), U("what was that?")]},
    {"name": "think_mode_system", "messages": [
        S("/no_think You are terse.  \n"), U("Hi /think"), A("\n\nHello."), U("Bye")]},
    {"name": "think_mode_both", "messages": [S("Use /think but also /no_think"), U("Hi")]},
    {"name": "think_mode_only_flag", "messages": [S("/no_think"), U("Hi")]},
    {"name": "think_mode_think_flag", "messages": [S("Think hard. /think\n"), U("Hi")]},
    {"name": "think_mode_replace_order", "messages": [S("//no_thinkthink x/no_/thinkthink"), U("Hi")]},
    {"name": "no_think_kwarg", "kwargs": {"enable_thinking": False}, "messages": [
        U("Hi"), A("\nHello."), U("Bye")]},
    {"name": "no_think_kwarg_system_think", "kwargs": {"enable_thinking": False}, "messages": [
        S("Custom. /think"), U("Hi")]},
    {"name": "date_custom", "kwargs": {"date_string": "05 Mar 2025"}, "messages": [U("What day is it?")],
     "only": ["llama3.1", "llama3.2"]},
    {"name": "date_default", "no_date": True, "messages": [S("sys"), U("What day is it?")],
     "only": ["llama3.1"]},
    {"name": "no_bos_eos", "bos": "", "eos": "", "gen": False, "messages": [U("Hi"), A("Hello")]},
    {"name": "long_conversation", "messages": [
        m for i in range(6) for m in (U("question %d" % i), A("answer %d\n" % i))] + [U("last")]},
]


# Pieces of random contents: Python-only and shared whitespace, think tags and
# flags, quoting, other templates' markers.
RANDOM_PIECES = [" ", "\n", "\t", "\r\n", "\u00a0", "\u2028", "\u3000", "\x1c", "\u200b",
                 "</think>", "<think>", "/think", "/no_think", "/no_", "think", "a", "b", "é", "🙂",
                 "\"", "\\", "\x01", "\x7f", "<|im_end|>", "[INST]", "{{", "%}", "x y"]
RANDOM_CASES = 40
RANDOM_SEED = 20250101


def random_cases():
    rng = random.Random(RANDOM_SEED)
    roles = ["system", "user", "assistant", "tool"]
    cases = []
    for i in range(RANDOM_CASES):
        msgs = []
        for k in range(rng.randint(1, 6)):
            # Half alternate user/assistant, so strict templates render too.
            r = rng.choice(roles) if rng.random() < 0.5 else ["user", "assistant"][k % 2]
            c = "".join(rng.choice(RANDOM_PIECES) for _ in range(rng.randint(0, 8)))
            msgs.append({"role": r, "content": c})
        case = {"name": "random_%d" % i, "messages": msgs, "gen": rng.random() < 0.5}
        if rng.random() < 0.3:
            case["kwargs"] = {"enable_thinking": False}
        cases.append(case)
    return cases


def env():
    e = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=["jinja2.ext.loopcontrols"])

    def raise_exception(msg):
        raise TemplateError(msg)

    def strftime_now(fmt):
        raise RuntimeError("strftime_now called: pin date_string in this case")

    e.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii)
    e.globals["raise_exception"] = raise_exception
    e.globals["strftime_now"] = strftime_now
    return e


def gguf_template(path):
    sys.path.insert(0, os.path.join(SHARED, "tools"))
    import gguflib  # ../shared/tools, stdlib only
    return gguflib.GGUFReader(path).kv["tokenizer.chat_template"][1]


def template_text(src):
    if "inline" in src:
        return src["inline"]
    if "gguf" in src:
        return gguf_template(os.path.join(SHARED, src["gguf"]))
    with open(os.path.join(SHARED, src["shared"]), encoding="utf-8") as f:
        return f.read()


def render(e, text, case, bos, eos):
    kw = {} if case.get("no_date") else dict(DATE)
    kw.update(case.get("kwargs", {}))
    t = e.from_string(text)
    try:
        return t.render(messages=case["messages"], bos_token=case.get("bos", bos),
                        eos_token=case.get("eos", eos),
                        add_generation_prompt=case.get("gen", True), **kw), None
    except TemplateError as ex:
        if type(ex) is not TemplateError:  # UndefinedError etc: a bug in a case
            raise
        return None, str(ex)


def build():
    """{relative path: bytes} of everything under tests/data/chat/."""
    e = env()
    files = {}
    fams = []
    texts = {}
    for name, src, bos, eos in FAMILIES:
        texts[name] = template_text(src)
        entry = {"name": name, "bos": bos, "eos": eos}
        entry.update({"template": src["inline"]} if "inline" in src else src)
        fams.append(entry)
    cases = []
    for case in CASES:
        results = {}
        for name, _, bos, eos in FAMILIES:
            if "only" in case and name not in case["only"]:
                continue
            out, err = render(e, texts[name], case, bos, eos)
            if err is not None:
                results[name] = {"error": err}
            else:
                rel = "%s/%s.txt" % (name, case["name"])
                files[rel] = out.encode("utf-8")
                results[name] = {"file": rel}
        kw = {} if case.get("no_date") else dict(DATE)
        kw.update(case.get("kwargs", {}))
        c = {"name": case["name"], "messages": case["messages"],
             "add_generation_prompt": case.get("gen", True), "kwargs": kw}
        for k in ("bos", "eos"):
            if k in case:
                c[k] = case[k]
        c["results"] = results
        cases.append(c)
    index = {"generator": "tools/gen_chat_expected.py", "families": fams, "cases": cases}
    files["cases.json"] = (json.dumps(index, ensure_ascii=False, indent=1) + "\n").encode("utf-8")

    rcases = []
    for case in random_cases():
        results = {}
        for name, _, bos, eos in FAMILIES:
            out, err = render(e, texts[name], case, bos, eos)
            results[name] = {"error": err} if err is not None else {"text": out}
        kw = dict(DATE)
        kw.update(case.get("kwargs", {}))
        rcases.append({"name": case["name"], "messages": case["messages"],
                       "add_generation_prompt": case["gen"], "kwargs": kw, "results": results})
    rindex = {"generator": "tools/gen_chat_expected.py", "seed": RANDOM_SEED, "cases": rcases}
    files["random.json"] = (json.dumps(rindex, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    return files


def main():
    check = "--check" in sys.argv[1:]
    files = build()
    bad = 0
    for rel, data in sorted(files.items()):
        path = os.path.join(OUT, rel)
        if check:
            try:
                with open(path, "rb") as f:
                    same = f.read() == data
            except OSError:
                same = False
            if not same:
                print("differs: " + rel)
                bad += 1
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    if check:
        # Files we no longer write would linger in the tree.
        for dirpath, _, names in os.walk(OUT):
            for n in names:
                rel = os.path.relpath(os.path.join(dirpath, n), OUT)
                if rel not in files:
                    print("stale: " + rel)
                    bad += 1
        sys.exit(1 if bad else 0)
    print("wrote %d files under %s" % (len(files), os.path.relpath(OUT)))


if __name__ == "__main__":
    main()
