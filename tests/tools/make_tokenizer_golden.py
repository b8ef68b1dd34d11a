#!/usr/bin/env python3
"""Writes the tokenizer parity fixtures under tests/fixtures/tokenizer/.

For every case of corpus.json (hex, so that invalid UTF-8 survives) it
records the token ids that reference implementations produce:

  smollm2.golden.json  SmolLM2-135M-Instruct GGUF through llama.cpp
                       (llama-cpp-python), parse_special off and on.
  spm.golden.json      a SentencePiece BPE model with byte fallback trained
                       here (spm/spm.model), through sentencepiece, through
                       llama.cpp on its vocab-only GGUF (spm/spm.gguf) and
                       through HF tokenizers on its tokenizer.json.
  bpe.golden.json      a byte-level BPE trained here with HF tokenizers
                       (bpe/tokenizer.json), through tokenizers.
  raw.golden.json      a byte-level BPE trained without any pre-split
                       (bpe_raw/), so that its merges cross the boundaries the
                       pre-tokenizers disagree on: as a vocab-only GGUF
                       (bpe_raw/raw.gguf) through llama.cpp under each GGUF
                       pre-tokenizer name the tests cover (the test rewrites
                       tokenizer.ggml.pre), and as a tokenizer.json with
                       Llama-3's Split regex through tokenizers.
  variants.golden.json the small tokenizers with other normalizers and
                       pre-tokenizers spliced in (NFKD + Replace, Metaspace,
                       every Split behavior, inverted), through tokenizers;
                       the test splices the same JSON in.

The references agree on every case but one kind: llama.cpp's SentencePiece
path merges invalid UTF-8 as raw bytes (<0xNN> tokens) where sentencepiece,
tokenizers and lloco read U+FFFD; spm() checks that this is the only
disagreement and the test compares those cases with the others only.

Trained models are kept as fixtures and only retrained with --retrain (the
training text is Debian's /usr/share/common-licenses plus a multilingual
sample below). Needs: llama-cpp-python, sentencepiece, tokenizers,
transformers, gguf.

Usage: tests/tools/make_tokenizer_golden.py [--model PATH] [--retrain]
"""
import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

MULTILINGUAL = """\
Le café est très chaud. Où est la bibliothèque? Je ne sais pas, peut-être là-bas.
¿Dónde está la estación? Mañana vamos a la playa con los niños.
Die Straße ist nass, weil es geregnet hat. Größe, Öl, Übung.
我们今天去公园散步。天气很好，阳光明媚。中文文本用于训练。
今日は良い天気ですね。日本語のテキストです。ありがとうございます。
안녕하세요. 오늘 날씨가 좋네요. 한국어 문장입니다.
Привет, мир! Это русский текст для обучения токенизатора.
Γειά σου κόσμε! Αυτό είναι ελληνικό κείμενο.
مرحبا بالعالم! هذا نص عربي للتدريب.
def tokenize(text): return [t for t in text.split() if t]  # Python
int main(void) { printf("%d\\n", 42); return 0; }
Emoji: 😀 🎉 👍 ❤️ 🍕
"""

# The invalid-UTF-8 rule the tokenizers under test follow (llama.cpp's):
# every byte that does not start or continue a valid sequence is U+FFFD.
def repair_utf8(b):
    out, i = [], 0
    while i < len(b):
        c = b[i]
        need, lo, hi = 0, 0x80, 0xBF
        if c < 0x80:
            need = 1
        elif 0xC2 <= c <= 0xDF:
            need = 2
        elif 0xE0 <= c <= 0xEF:
            need = 3
            lo = 0xA0 if c == 0xE0 else 0x80
            hi = 0x9F if c == 0xED else 0xBF
        elif 0xF0 <= c <= 0xF4:
            need = 4
            lo = 0x90 if c == 0xF0 else 0x80
            hi = 0x8F if c == 0xF4 else 0xBF
        ok = need > 0 and i + need <= len(b)
        if ok and need > 1:
            ok = lo <= b[i + 1] <= hi and all(0x80 <= x <= 0xBF for x in b[i + 2:i + need])
        if ok:
            out.append(b[i:i + need].decode("utf-8"))
            i += need
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


def load_corpus():
    with open(os.path.join(FIX, "corpus.json")) as f:
        return [(c["note"], bytes.fromhex(c["hex"])) for c in json.load(f)]


def write_golden(name, doc):
    path = os.path.join(FIX, name)
    with open(path, "w") as f:
        # One case per line keeps diffs readable.
        head = {k: v for k, v in doc.items() if k != "cases"}
        f.write("{\n")
        for k, v in head.items():
            f.write(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},\n")
        f.write('  "cases": [\n')
        f.write(",\n".join("    " + json.dumps(c, ensure_ascii=False) for c in doc["cases"]))
        f.write("\n  ]\n}\n")
    print(f"wrote {path}")


def llama_vocab(path):
    import llama_cpp
    return llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)


def training_text():
    parts = []
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p):
            with open(p, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
    parts.append(MULTILINGUAL * 20)
    return "\n".join(parts)


# ---- (a) SmolLM2 through llama.cpp ----------------------------------------

def smollm2(corpus, model):
    import llama_cpp
    llm = llama_vocab(model)
    cases = []
    for note, b in corpus:
        cases.append({"note": note, "hex": b.hex(),
                      "ids": llm.tokenize(b, add_bos=False, special=False),
                      "ids_special": llm.tokenize(b, add_bos=False, special=True)})
    write_golden("smollm2.golden.json", {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}",
        "cases": cases})


# ---- (b) SentencePiece BPE ---------------------------------------------------

def spm_train(d):
    import sentencepiece as spm
    txt = os.path.join(d, "train.txt")
    with open(txt, "w") as f:
        f.write(training_text())
    # Llama-2's settings: identity normalization, no whitespace folding,
    # digits split, byte fallback, <unk>=0 <s>=1 </s>=2.
    spm.SentencePieceTrainer.train(
        input=txt, model_prefix=os.path.join(d, "spm"), vocab_size=1000, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, allow_whitespace_only_pieces=True, add_dummy_prefix=True,
        character_coverage=0.9995, num_threads=1, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    os.remove(txt)
    os.remove(os.path.join(d, "spm.vocab"))


def spm_pieces(sp):
    out = []
    for i in range(sp.get_piece_size()):
        t = 1
        if sp.is_unknown(i):
            t = 2
        elif sp.is_control(i):
            t = 3
        elif sp.is_unused(i):
            t = 5
        elif sp.is_byte(i):
            t = 6
        out.append((sp.id_to_piece(i), sp.get_score(i), t))
    return out


def spm_tokenizer_json(pieces, d):
    """tokenizer.json as transformers' LlamaConverter (legacy) builds it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers.tokenization_utils_base import generate_merges
    vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
    merges = generate_merges(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(content=" ", left=1)])
    tok.add_special_tokens([AddedToken(p, normalized=False, special=True)
                            for p, _, t in pieces if t in (2, 3)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                   "eos_token": "</s>", "unk_token": "<unk>",
                   "tokenizer_class": "LlamaTokenizer"}, f, indent=2)
        f.write("\n")
    return tok


def spm_gguf(pieces, path):
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    # Hyper-parameters llama.cpp wants even for a vocab-only load.
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_tokenizer_model("llama")
    w.add_token_list([p for p, _, _ in pieces])
    w.add_token_scores([s for _, s, _ in pieces])
    w.add_token_types([t for _, _, t in pieces])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spm(corpus, retrain):
    import llama_cpp
    import sentencepiece as spm_mod
    import tokenizers
    d = os.path.join(FIX, "spm")
    os.makedirs(d, exist_ok=True)
    model = os.path.join(d, "spm.model")
    if retrain or not os.path.exists(model):
        spm_train(d)
    sp = spm_mod.SentencePieceProcessor(model_file=model)
    pieces = spm_pieces(sp)
    hf = spm_tokenizer_json(pieces, d)
    gguf_path = os.path.join(d, "spm.gguf")
    spm_gguf(pieces, gguf_path)
    llm = llama_vocab(gguf_path)

    cases = []
    for note, b in corpus:
        text = repair_utf8(b)
        c = {"note": note, "hex": b.hex()}
        # sentencepiece reads bytes and never matches control tokens in text.
        c["spm"] = sp.encode(b)
        c["llamacpp"] = llm.tokenize(b, add_bos=False, special=False)
        c["llamacpp_special"] = llm.tokenize(b, add_bos=False, special=True)
        hf.encode_special_tokens = True
        c["hf"] = hf.encode(text, add_special_tokens=False).ids
        hf.encode_special_tokens = False
        c["hf_special"] = hf.encode(text, add_special_tokens=False).ids
        cases.append(c)
    for c in cases:
        valid = repair_utf8(bytes.fromhex(c["hex"])).encode() == bytes.fromhex(c["hex"])
        agree = c["spm"] == c["hf"] and (not valid or (
            c["spm"] == c["llamacpp"] and c["llamacpp_special"] == c["hf_special"]))
        if not agree:
            sys.exit(f"spm: references disagree on '{c['note']}': {c}")
    write_golden("spm.golden.json", {
        "model": "spm/spm.model (sentencepiece BPE, vocab 1000, byte fallback)",
        "reference": (f"sentencepiece {spm_mod.__version__}; llama.cpp via llama-cpp-python "
                      f"{llama_cpp.__version__} on spm/spm.gguf; tokenizers "
                      f"{tokenizers.__version__} on spm/tokenizer.json"),
        "cases": cases})


# ---- (c) byte-level BPE trained with tokenizers -------------------------------

def bpe_train(d):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, min_frequency=2, show_progress=False,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text().splitlines(keepends=True), trainer)
    # A non-special added token: split out even when specials are not parsed.
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=False)])
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": False, "bos_token": "<|im_start|>",
                   "eos_token": "<|im_end|>"}, f, indent=2)
        f.write("\n")


def bpe(corpus, retrain):
    import tokenizers
    from tokenizers import Tokenizer
    d = os.path.join(FIX, "bpe")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "tokenizer.json")
    if retrain or not os.path.exists(path):
        bpe_train(d)
    hf = Tokenizer.from_file(path)
    cases = []
    for note, b in corpus:
        text = repair_utf8(b)
        hf.encode_special_tokens = True
        ids = hf.encode(text, add_special_tokens=False).ids
        hf.encode_special_tokens = False
        ids_special = hf.encode(text, add_special_tokens=False).ids
        cases.append({"note": note, "hex": b.hex(), "ids": ids, "ids_special": ids_special})
    write_golden("bpe.golden.json", {
        "model": "bpe/tokenizer.json (byte-level BPE, vocab 1000, Digits+ByteLevel)",
        "reference": f"tokenizers {tokenizers.__version__}",
        "cases": cases})


GGUF_PRES = ["default", "gpt-2", "llama-bpe", "qwen2", "smollm"]

# Llama-3's pre-tokenizer as its tokenizer.json declares it.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def raw_train(d):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, min_frequency=2, show_progress=False,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Chunks that cross lines, plus code and numbers, so that merges join
    # digits, newlines, indentation and punctuation with letters.
    text = training_text()
    for p in sorted(glob.glob("/usr/lib/python3*/json/*.py")):
        with open(p, encoding="utf-8") as f:
            text += f.read()
    text += "".join(f"{i * 7919} {i}.{i * 31} ({i}) 'S 'T 'LL 'RE\n  \n" for i in range(3000))
    tok.train_from_iterator([text[i:i + 4000] for i in range(0, len(text), 4000)], trainer)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.save(os.path.join(d, "tokenizer.json"))


def write_bpe_gguf(tok_json, path, pre):
    import gguf
    with open(tok_json) as f:
        j = json.load(f)
    n = 1 + max(list(j["model"]["vocab"].values()) + [a["id"] for a in j["added_tokens"]])
    tokens, types = [""] * n, [1] * n
    for t, i in j["model"]["vocab"].items():
        tokens[i] = t
    for a in j["added_tokens"]:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = 3 if a["special"] else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def raw(corpus, retrain):
    import tempfile
    import llama_cpp
    import tokenizers
    from tokenizers import Tokenizer
    d = os.path.join(FIX, "bpe_raw")
    os.makedirs(d, exist_ok=True)
    tok_json = os.path.join(d, "tokenizer.json")
    if retrain or not os.path.exists(tok_json):
        raw_train(d)
    write_bpe_gguf(tok_json, os.path.join(d, "raw.gguf"), "gpt-2")
    hf = Tokenizer.from_file(tok_json)
    cases = []
    for note, b in corpus:
        hf.encode_special_tokens = True
        cases.append({"note": note, "hex": b.hex(),
                      "hf_llama3": hf.encode(repair_utf8(b), add_special_tokens=False).ids})
    with tempfile.TemporaryDirectory() as tmp:
        for pre in GGUF_PRES:
            path = os.path.join(tmp, f"{pre}.gguf")
            write_bpe_gguf(tok_json, path, pre)
            llm = llama_vocab(path)
            for c, (_, b) in zip(cases, corpus):
                c[pre] = llm.tokenize(b, add_bos=False, special=False)
            del llm
    write_golden("raw.golden.json", {
        "model": ("bpe_raw/raw.gguf with tokenizer.ggml.pre set to each of "
                  + ", ".join(GGUF_PRES) + "; bpe_raw/tokenizer.json (Llama-3 Split)"),
        "reference": (f"llama.cpp via llama-cpp-python {llama_cpp.__version__}; "
                      f"tokenizers {tokenizers.__version__}"),
        "cases": cases})


def _byte_level(add_prefix_space, use_regex):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "use_regex": use_regex,
            "trim_offsets": True}


def _split(regex, behavior, invert=False, literal=False):
    return {"type": "Split", "pattern": {"String" if literal else "Regex": regex},
            "behavior": behavior, "invert": invert}


VARIANTS = [
    ("nfkd_replace", "bpe_raw/tokenizer.json",
     {"type": "Sequence", "normalizers": [
         {"type": "NFKD"}, {"type": "Replace", "pattern": {"Regex": "[0-9]+"}, "content": "#"}]},
     "keep"),
    ("nfc", "bpe_raw/tokenizer.json", {"type": "NFC"}, "keep"),
    ("metaspace_first", "spm/tokenizer.json", None,
     {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}),
    ("metaspace_always_split", "spm/tokenizer.json", None,
     {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}),
    ("split_behaviors", "bpe_raw/tokenizer.json", None,
     {"type": "Sequence", "pretokenizers": [
         _split("\\d+", "MergedWithPrevious"), _split(" ", "MergedWithNext", literal=True),
         _split("[.,!?]", "Contiguous"), _split("\\p{L}+", "Removed", invert=True),
         _byte_level(True, True)]}),
    ("split_inverted", "bpe_raw/tokenizer.json", None,
     {"type": "Sequence", "pretokenizers": [
         _split("\\s+", "MergedWithNext", invert=True),
         _split("[aeiou]", "MergedWithPrevious", invert=True),
         _split("\\p{P}", "Isolated", invert=True), {"type": "WhitespaceSplit"},
         _byte_level(False, False)]}),
]


def variants(corpus):
    import tempfile
    import tokenizers
    from tokenizers import Tokenizer
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, base, normalizer, pre in VARIANTS:
            with open(os.path.join(FIX, base)) as f:
                j = json.load(f)
            j["normalizer"] = normalizer
            if pre != "keep":
                j["pre_tokenizer"] = pre
            path = os.path.join(tmp, "tokenizer.json")
            with open(path, "w") as f:
                json.dump(j, f)
            hf = Tokenizer.from_file(path)
            out.append({"name": name, "base": base, "normalizer": normalizer,
                        "pre_tokenizer": j["pre_tokenizer"],
                        "ids": [hf.encode(repair_utf8(b), add_special_tokens=False).ids
                                for _, b in corpus]})
    path = os.path.join(FIX, "variants.golden.json")
    with open(path, "w") as f:
        f.write('{\n  "reference": ' + json.dumps(f"tokenizers {tokenizers.__version__}")
                + ',\n  "variants": [\n')
        f.write(",\n".join("    " + json.dumps(v, ensure_ascii=False) for v in out))
        f.write("\n  ]\n}\n")
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models",
                                                    "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--retrain", action="store_true", help="retrain the small tokenizers")
    args = ap.parse_args()
    corpus = load_corpus()
    if not os.path.exists(args.model):
        sys.exit(f"missing {args.model} (run ./scripts/setup.sh)")
    smollm2(corpus, args.model)
    spm(corpus, args.retrain)
    bpe(corpus, args.retrain)
    raw(corpus, args.retrain)
    variants(corpus)


if __name__ == "__main__":
    main()
