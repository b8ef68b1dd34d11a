#!/usr/bin/env python3
"""Writes tests/fixtures/tiny-llama/: a tiny random-weight LlamaForCausalLM as
HF safetensors (F32, and BF16 in shards) and as llama.cpp-style GGUF files in
several weight types, plus reference logits / final hidden states computed by
transformers in float32 from the exact weights each file holds.

Run from anywhere: python3 tests/tools/make_tiny_llama.py  (needs torch,
transformers, tokenizers, gguf, numpy). Output is deterministic for a given
set of library versions; see the fixture's README.md for the layout.
"""
import importlib.metadata
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tiny-llama"
SEED = 1234

N_EMBD, N_FF, N_LAYER, N_HEAD, N_HEAD_KV, HEAD_DIM = 256, 256, 2, 4, 2, 64
N_VOCAB, N_CTX, ROPE_THETA, RMS_EPS = 260, 512, 10000.0, 1e-5

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 256..258
MERGE = ("Ġ", "t")  # the one merge; its result " t" is id 259
BOS_ID, EOS_ID, UNK_ID, PAD_ID = 257, 258, 256, 258
CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# 24 tokens: ChatML-framed text; with byte tokens (id == byte) plus the
# " t" merge the ids are easy to check by eye.
REF_TEXT = "<|im_start|>user\nWhat time is it?<|im_end|>\n<|im_start|>"
N_EMBD_ROWS, N_EMBD_TOKENS = 6, 8

# GGUF variants: file name, type of the 2D weights (token_embd and output
# included), llama.cpp file type id, data alignment.
GGUF_VARIANTS = [
    ("tiny-f16.gguf", QT.F16, gguf.LlamaFileType.MOSTLY_F16, 32),
    ("tiny-q8_0.gguf", QT.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0, 32),
    ("tiny-q4_0.gguf", QT.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0, 32),
    ("tiny-q4_1.gguf", QT.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1, 32),
    ("tiny-q4_k.gguf", QT.Q4_K, gguf.LlamaFileType.MOSTLY_Q4_K_S, 64),
    ("tiny-q6_k.gguf", QT.Q6_K, gguf.LlamaFileType.MOSTLY_Q6_K, 32),
]


# ---- tokenizer --------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's byte -> printable character map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def vocab_list():
    """Token texts by id: byte b is id b, then the specials, then the merge."""
    b2u = bytes_to_unicode()
    return [b2u[b] for b in range(256)] + SPECIALS + [MERGE[0] + MERGE[1]]


def build_tokenizer():
    toks = vocab_list()
    vocab = {t: i for i, t in enumerate(toks)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[MERGE], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == 256 + i
    return tok


def write_tokenizer(tok, d):
    tok.save(str(d / "tokenizer.json"))
    added = {str(256 + i): {"content": s, "lstrip": False, "normalized": False,
                            "rstrip": False, "single_word": False, "special": True}
             for i, s in enumerate(SPECIALS)}
    cfg = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": SPECIALS[1],
        "eos_token": SPECIALS[2],
        "unk_token": SPECIALS[0],
        "pad_token": SPECIALS[2],
        "chat_template": CHATML,
        "clean_up_tokenization_spaces": False,
        "model_max_length": N_CTX,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


# ---- model ------------------------------------------------------------------

def make_config():
    return LlamaConfig(
        hidden_size=N_EMBD, intermediate_size=N_FF, num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD_KV, head_dim=HEAD_DIM,
        vocab_size=N_VOCAB, max_position_embeddings=N_CTX, rope_theta=ROPE_THETA,
        rms_norm_eps=RMS_EPS, tie_word_embeddings=False, bos_token_id=BOS_ID,
        eos_token_id=EOS_ID, hidden_act="silu")


def random_weights(model, rng):
    """Weights drawn with numpy (stable across torch versions). Scales keep
    every activation O(1): linear weights ~ N(0, 1/fan_in), so attention
    scores and logits spread over a few units instead of collapsing to
    uniform, and norm weights ~ 1 +- 0.2 so a missing norm weight shows."""
    sd = {}
    for name, p in model.state_dict().items():
        if p.ndim == 1:
            w = 1.0 + 0.2 * rng.standard_normal(p.shape)
        elif "embed_tokens" in name:
            w = 0.5 * rng.standard_normal(p.shape)
        elif "lm_head" in name:
            w = 2.0 / np.sqrt(p.shape[1]) * rng.standard_normal(p.shape)
        else:
            w = rng.standard_normal(p.shape) / np.sqrt(p.shape[1])
        sd[name] = w.astype(np.float32)
    return sd


def model_from(sd):
    model = LlamaForCausalLM(make_config()).eval()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()})
    return model


def patch_config(d):
    # transformers 5 writes rope_parameters only; older readers (and most
    # published checkpoints) use the flat key, so write both.
    p = d / "config.json"
    cfg = json.loads(p.read_text())
    cfg["rope_theta"] = ROPE_THETA
    p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# ---- quantization -----------------------------------------------------------

def f16_bytes(x):
    return np.asarray(x, dtype=np.float16).reshape(-1, 1).view(np.uint8)


def quantize_q4_k(w):
    """Q4_K blocks of 256: 8 sub-blocks of 32 with 6-bit scale/min, 4-bit
    values. A plain min/max fit (llama.cpp searches harder; any valid block
    will do since the reference uses the dequantized weights)."""
    x = w.reshape(-1, 8, 32).astype(np.float32)
    nb = x.shape[0]
    lo = np.minimum(x.min(axis=-1), 0.0)
    hi = x.max(axis=-1)
    scale = (hi - lo) / 15.0
    mins = -lo
    d = (scale.max(axis=-1) / 63.0).astype(np.float16).astype(np.float32)
    dmin = (mins.max(axis=-1) / 63.0).astype(np.float16).astype(np.float32)
    sd = np.where(d[:, None] > 0, scale / np.where(d[:, None] > 0, d[:, None], 1), 0)
    sm = np.where(dmin[:, None] > 0, mins / np.where(dmin[:, None] > 0, dmin[:, None], 1), 0)
    sc = np.clip(np.rint(sd), 0, 63).astype(np.uint8)
    mn = np.clip(np.rint(sm), 0, 63).astype(np.uint8)
    step = d[:, None] * sc
    off = dmin[:, None] * mn
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step[..., None] > 0, np.rint((x + off[..., None]) / step[..., None]), 0)
    q = np.clip(q, 0, 15).astype(np.uint8)
    # scales[12]: bytes 0-3 low 6 bits of sc[0..3] (+ high 2 bits of sc[4..7]),
    # bytes 4-7 the same for mins, bytes 8-11 low nibbles of sc/mn[4..7].
    s = np.zeros((nb, 12), np.uint8)
    s[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = (mn[:, 0:4] & 0x3F) | ((mn[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    # qs: for each pair of sub-blocks (2j, 2j+1), 32 bytes: low nibble from
    # sub-block 2j, high nibble from 2j+1.
    qp = q.reshape(nb, 4, 2, 32)
    qs = (qp[:, :, 0, :] | (qp[:, :, 1, :] << 4)).reshape(nb, 128)
    blocks = np.concatenate([f16_bytes(d), f16_bytes(dmin), s, qs], axis=1)
    return blocks.reshape(w.shape[0], -1)


def quantize_q6_k(w):
    """Q6_K blocks of 256: 16 sub-blocks of 16 with int8 scales, 6-bit values
    stored as low 4 bits (ql) + high 2 bits (qh)."""
    x = w.reshape(-1, 16, 16).astype(np.float32)
    nb = x.shape[0]
    amax = np.abs(x).max(axis=-1)
    scale = amax / 31.0
    d = (scale.max(axis=-1) / 127.0).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0)
    sc = np.clip(sc, -128, 127).astype(np.int8)
    step = d[:, None] * sc.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step[..., None] > 0, np.rint(x / step[..., None]), 0)
    q = (np.clip(q, -32, 31).astype(np.int16) + 32).astype(np.uint8).reshape(nb, 2, 4, 32)
    # Each half of 128 values: ql[64] holds values 0..63 in low nibbles and
    # 64..127 in high nibbles; qh[32] holds the 2 high bits of values
    # l, l+32, l+64, l+96 at bit pairs 0, 2, 4, 6.
    lo = q & 0x0F
    ql = (lo[:, :, 0:2, :].reshape(nb, 2, 64) | (lo[:, :, 2:4, :].reshape(nb, 2, 64) << 4))
    hb = q >> 4
    qh = hb[:, :, 0] | (hb[:, :, 1] << 2) | (hb[:, :, 2] << 4) | (hb[:, :, 3] << 6)
    blocks = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64),
                             sc.view(np.uint8), f16_bytes(d)], axis=1)
    return blocks.reshape(w.shape[0], -1)


def encode(w, qt):
    """(stored array for GGUFWriter, raw_dtype or None, dequantized weights)."""
    if qt == QT.F16:
        h = w.astype(np.float16)
        return h, None, h.astype(np.float32)
    if qt in (QT.Q4_K, QT.Q6_K):
        q = quantize_q4_k(w) if qt == QT.Q4_K else quantize_q6_k(w)
    else:
        q = gguf.quants.quantize(w, qt)
    deq = gguf.quants.dequantize(q, qt).reshape(w.shape).astype(np.float32)
    return q, qt, deq


# ---- GGUF ---------------------------------------------------------------------

def permute(w, n_head):
    """llama.cpp convert_hf_to_gguf LlamaModel.permute: HF's rotate_half
    layout -> GGML's adjacent-pair ("normal") RoPE layout."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf):
    fixed = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")  # model.layers.N.<module>.<proj>.weight
    sub = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
           "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
           "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
           "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    key = ".".join(parts[3:-1])
    return f"blk.{parts[2]}.{sub[key]}.weight"


def write_gguf(path, sd, qt, ftype, alignment):
    """Writes sd (HF names, float32) as GGUF; returns the HF-layout state
    dict of the weights the file actually holds."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_file_type(int(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if alignment != gguf.GGUF_DEFAULT_ALIGNMENT:
        w.add_custom_alignment(alignment)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_vocab_size(N_VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(vocab_list())
    w.add_token_types([gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * len(SPECIALS)
                      + [gguf.TokenType.NORMAL])
    w.add_token_merges([f"{MERGE[0]} {MERGE[1]}"])
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)

    true_sd = {}
    for name, t in sd.items():
        gname = gguf_name(name)
        if t.ndim == 1:
            w.add_tensor(gname, t)
            true_sd[name] = t
            continue
        heads = N_HEAD if "q_proj" in name else N_HEAD_KV if "k_proj" in name else 0
        stored = permute(t, heads) if heads else t
        arr, raw, deq = encode(stored, qt)
        w.add_tensor(gname, arr, raw_dtype=raw)
        true_sd[name] = unpermute(deq, heads) if heads else deq
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return true_sd


# ---- reference outputs --------------------------------------------------------

@torch.no_grad()
def run_reference(model, ids, embd_rows, embd_ids):
    """Logits and final hidden states after the last RMSNorm, for the token
    case and the embeddings-input case."""
    got = {}
    hook = model.model.norm.register_forward_hook(lambda m, i, o: got.__setitem__("h", o))
    out = {}
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    out["logits"], out["hidden"] = logits, got["h"][0]
    tok = model.model.embed_tokens(torch.tensor([embd_ids]))
    embeds = torch.cat([torch.from_numpy(embd_rows)[None], tok], dim=1)
    logits = model(inputs_embeds=embeds).logits[0]
    out["embd_logits"], out["embd_hidden"] = logits, got["h"][0]
    hook.remove()
    for k in ("", "embd_"):
        again = model.lm_head(out[k + "hidden"])
        assert torch.allclose(again, out[k + "logits"], atol=1e-4), "hook is not the last norm"
    return {k: v.float().numpy().astype("<f4") for k, v in out.items()}


def write_reference(name, model_dir, model, ids, embd_rows, embd_ids):
    r = run_reference(model, ids, embd_rows, embd_ids)
    files = {}
    for k, arr in r.items():
        fn = f"ref/{name}.{k}.f32"
        arr.tofile(OUT / fn)
        files[k] = {"file": fn, "shape": list(arr.shape)}
    std = float(r["logits"].std())
    assert std > 0.5, f"{name}: logits too flat (std {std})"
    return {"model": model_dir, **files, "logits_std": round(std, 4)}


def main():
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    # Start clean, keeping the hand-written README.
    OUT.mkdir(parents=True, exist_ok=True)
    for p in OUT.iterdir():
        if p.name != "README.md":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    (OUT / "ref").mkdir()

    tok = build_tokenizer()
    ids = tok.encode(REF_TEXT).ids
    assert len(ids) == 24 and 259 in ids and ids[0] == BOS_ID, ids
    embd_ids = ids[-N_EMBD_TOKENS:]
    template = make_config()
    base = random_weights(LlamaForCausalLM(template), rng)
    embd_rows = (0.5 * rng.standard_normal((N_EMBD_ROWS, N_EMBD))).astype("<f4")
    embd_rows.tofile(OUT / "ref" / "embd_rows.f32")

    variants = {}

    hf = OUT / "hf"
    model = model_from(base)
    model.save_pretrained(hf)
    patch_config(hf)
    write_tokenizer(tok, hf)
    variants["hf"] = write_reference("hf", "hf", model, ids, embd_rows, embd_ids)

    sh = OUT / "hf-sharded-bf16"
    model.to(torch.bfloat16).save_pretrained(sh, max_shard_size="1MB")
    patch_config(sh)
    write_tokenizer(tok, sh)
    assert (sh / "model.safetensors.index.json").exists()
    bf = {k: torch.from_numpy(v).to(torch.bfloat16).float().numpy() for k, v in base.items()}
    variants["hf-sharded-bf16"] = write_reference("hf-sharded-bf16", "hf-sharded-bf16",
                                                  model_from(bf), ids, embd_rows, embd_ids)

    for fn, qt, ftype, align in GGUF_VARIANTS:
        true_sd = write_gguf(OUT / fn, base, qt, ftype, align)
        name = fn[:-len(".gguf")]
        variants[name] = write_reference(name, fn, model_from(true_sd), ids, embd_rows,
                                         embd_ids)
        variants[name]["weight_type"] = qt.name

    ref = {
        "generator": "tests/tools/make_tiny_llama.py",
        "seed": SEED,
        "versions": {p: importlib.metadata.version(p)
                     for p in ("torch", "transformers", "tokenizers", "gguf", "numpy")},
        "text": REF_TEXT,
        "tokens": ids,
        "embd_case": {"rows_file": "ref/embd_rows.f32", "rows_shape": [N_EMBD_ROWS, N_EMBD],
                      "tokens": embd_ids},
        "n_vocab": N_VOCAB,
        "n_embd": N_EMBD,
        "variants": variants,
    }
    (OUT / "ref.json").write_text(json.dumps(ref, indent=2) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
