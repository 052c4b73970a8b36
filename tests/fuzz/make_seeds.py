#!/usr/bin/env python3
"""make_seeds.py - write the committed seed corpora of tests/fuzz (deterministic).

  python3 tests/fuzz/make_seeds.py      # rewrites tests/fuzz/corpus/*
"""
import json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf(kvs, tensors, version=3, align=32):
    out = struct.pack("<IIQQ", 0x46554747, version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t)
        if t == 8:
            out += gstr(v)
        elif t == 9:
            et, items = v
            out += struct.pack("<IQ", et, len(items))
            for it in items:
                out += gstr(it) if et == 8 else struct.pack("<i" if et == 5 else "<f", it)
        else:
            out += struct.pack({4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}[t], v)
    off = 0
    data = b""
    for name, dims, ty, payload in tensors:
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, off)
        data += payload + b"\0" * ((-len(payload)) % align)
        off = len(data)
    out += b"\0" * ((-len(out)) % align)
    return out + data


llama_kvs = [
    ("general.architecture", 8, "llama"), ("llama.context_length", 4, 64), ("llama.embedding_length", 4, 8),
    ("llama.block_count", 4, 1), ("llama.feed_forward_length", 4, 16), ("llama.attention.head_count", 4, 2),
    ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5), ("tokenizer.ggml.model", 8, "llama"),
    ("tokenizer.ggml.tokens", 9, (8, ["<unk>", "<s>", "</s>", "\u2581a", "b"])),
    ("tokenizer.ggml.scores", 9, (6, [0.0, 0.0, 0.0, -1.0, -2.0])),
    ("tokenizer.ggml.token_type", 9, (5, [2, 3, 3, 1, 1])), ("general.alignment", 4, 32), ("x.flag", 7, True),
]
f32 = lambda n: struct.pack("<%df" % n, *[0.25 * (i % 7) for i in range(n)])
put("gguf_fuzz", "llama_tiny.gguf", gguf(llama_kvs, [("token_embd.weight", [8, 5], 0, f32(40)),
                                                      ("output_norm.weight", [8], 0, f32(8))]))
put("gguf_fuzz", "v2_empty.gguf", gguf([("general.architecture", 8, "qwen2")], [], version=2))
q8 = struct.pack("<e", 0.5) + bytes(range(32))
put("gguf_fuzz", "q8_0.gguf", gguf([("general.architecture", 8, "llama")], [("w", [32, 1], 8, q8)]))

# kvwire payloads
layout = struct.pack("<QIIIII", 0x1234, 5, 4, 8, 16, 1)
put("kvwire_fuzz", "hello", struct.pack("<II", 1, 1) + layout)
put("kvwire_fuzz", "hello_ok", struct.pack("<II", 1, 2) + layout + struct.pack("<QH", 7, 5) + b"/tmp/" + struct.pack("<I", 42))
put("kvwire_fuzz", "room_dest", struct.pack("<II", 40, 3) + struct.pack("<iii", 5, 9, 2))
put("kvwire_fuzz", "range", struct.pack("<II", 0, 2))
put("kvwire_fuzz", "aux", struct.pack("<IfIIddQII", 42, -0.5, 16, 40, 0.01, 0.2, 4096, 1, 0) + struct.pack("<If", 42, -0.5))
put("kvwire_fuzz", "shm_attach", struct.pack("<QQQI", 2 * 5 * 4096, 4096, 2048, 2))
put("kvwire_fuzz", "ucx_info", struct.pack("<Q", 0x7f0000000000) + struct.pack("<QQQI", 2 * 5 * 4096, 4096, 2048, 2)
    + struct.pack("<II", 4, 3) + b"addr" + b"key")
put("kvwire_fuzz", "header", struct.pack("<IHHQQII", 0x564B4450, 1, 6, 99, 8 + 2048, 0, 0))

# HTTP bodies: first byte picks the API (0 completions, 1 chat, 2 generate)
put("openai_fuzz", "completions", b"\0" + json.dumps({"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.7,
    "top_p": 0.9, "stop": ["\n", "The"], "n": 2, "logprobs": 3, "echo": True, "stream": True,
    "stream_options": {"include_usage": True}, "logit_bias": {"5": -100}, "seed": 7}).encode())
put("openai_fuzz", "chat", b"\1" + json.dumps({"messages": [{"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_completion_tokens": 8, "logprobs": True,
    "top_logprobs": 2, "chat_template_kwargs": {"enable_thinking": False}, "bootstrap_host": "127.0.0.1",
    "bootstrap_port": 8998, "bootstrap_room": 123456789}).encode())
put("openai_fuzz", "generate", b"\2" + json.dumps({"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 4,
    "stop_token_ids": [2], "ignore_eos": True, "min_new_tokens": 1}, "return_logprob": True, "rid": "abc"}).encode())

# chat: NUL-separated messages, first byte of each picks the role
put("chat_fuzz", "multi", b"\0You are helpful.\0\1Hello!\0\2Hi there <think>x</think> ok\0\1Bye")
put("chat_fuzz", "tool", b"\1call a tool\0\3{\"result\": 1}\0\2done")

put("tokenizer_fuzz", "ascii", "Hello world! 123 4567 ' s'll   \n\n\tdone")
put("tokenizer_fuzz", "special", "<|im_start|>user\n<s>hi</s><|eot_id|> [INST] x [/INST]")
put("tokenizer_fuzz", "unicode", "\u4f60\u597d\uff0c\u4e16\u754c \U0001f600 caf\u00e9 na\u00efve \u0431\u044b\u0441\u0442\u0440\u043e")
put("tokenizer_fuzz", "bad_utf8", b"\xff\xfe abc \xc3\x28 \xe2\x82 \xf0\x9f\x98")
print("seeds written to", OUT)
