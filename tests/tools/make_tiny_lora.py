#!/usr/bin/env python3
"""Writes tests/fixtures/lora/: small PEFT LoRA adapters for the tiny-llama
fixture (tests/fixtures/tiny-llama/hf), the logits PEFT computes with each
(unmerged and after merge_and_unload), and llama.cpp GGUF conversions of some
of them, for lloco's LoRA tests to match.

Run from anywhere:
    python3 tests/tools/make_tiny_lora.py --llama-cpp DIR
(needs torch, transformers, peft, numpy; `pip install --no-deps peft
accelerate` is enough. DIR is a llama.cpp source tree for its
convert_lora_to_gguf.py, e.g. vendor/llama.cpp of the llama-cpp-python sdist:
`pip download --no-deps --no-binary :all: llama-cpp-python` and untar.)
Seeded, so a rerun with the same library versions gives the same numbers.
"""
import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "tests" / "fixtures" / "tiny-llama" / "hf"
OUT = ROOT / "tests" / "fixtures" / "lora"
SEED = 4321
ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Each adapter exercises something a real PEFT checkpoint can hold: LLoCO's
# own shape (r 8, alpha 16, q/k/v/o), every projection with rsLoRA, rank 1,
# F16 and BF16 tensors, layers_to_transform, a regex target_modules with
# rank_pattern / alpha_pattern, and fan_in_fan_out (see FIFO below).
ADAPTERS = [
    dict(name="r8-qkvo", r=8, lora_alpha=16, target_modules=ALL7[:4]),
    dict(name="r16-all-rslora", r=16, lora_alpha=8, target_modules=ALL7, use_rslora=True),
    dict(name="r1-mlp-f16", r=1, lora_alpha=4, target_modules=ALL7[4:], save_dtype=torch.float16),
    dict(name="r4-qv-layer1-fifo", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
         layers_to_transform=[1], fifo=True),
    dict(name="r2-pattern-bf16", r=2, lora_alpha=4,
         target_modules=r".*\.(k_proj|o_proj)|model\.layers\.1\.mlp\.down_proj",
         rank_pattern={"o_proj": 6}, alpha_pattern={r"layers\.1\.mlp\.down_proj": 3.0},
         save_dtype=torch.bfloat16),
]
# llama.cpp conversions (convert_lora_to_gguf.py --outtype ...): F32 and F16
# keep the values exactly; q8_0 rounds the matrices whose rows are whole
# Q8_0 blocks (A here) and leaves the others (B, rows of r values) in F16.
# rsLoRA and alpha_pattern adapters are not converted: the GGUF format has
# only adapter.lora.alpha, and llama.cpp scales every pair by alpha / rank.
GGUF = [("r8-qkvo", "f32"), ("r8-qkvo", "q8_0"), ("r1-mlp-f16", "f16")]

# FIFO: PEFT never writes fan_in_fan_out=true for LLaMA: the flag describes
# the *base* weight layout (GPT-2's Conv1D stores [in, out]); for an
# nn.Linear target LoraConfig warns and resets it to False before saving,
# and lora_A / lora_B keep their shapes ([r, in], [out, r]) either way. A
# checkpoint with the flag set (written for a Conv1D model, or edited) is
# made by setting it in adapter_config.json after saving; PEFT loads it onto
# LLaMA by resetting the flag again, and its reference logits below come from
# exactly that load.


def lora_scale(module, name="default"):
    return float(module.scaling[name])


def randomize(model, rng):
    """PEFT starts B at zero (the adapter is a no-op); give A and B random
    values so every target visibly changes the logits: A ~ N(0, 1/in) keeps
    A·x at unit scale, B's spread makes scale·B·A·x about 0.4 of W·x."""
    with torch.no_grad():
        for _, mod in model.named_modules():
            if not hasattr(mod, "lora_A") or "default" not in mod.lora_A:
                continue
            a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
            r, fan_in = a.shape
            a.copy_(torch.from_numpy(rng.standard_normal(a.shape) / np.sqrt(fan_in)))
            sigma = 0.4 / (lora_scale(mod) * np.sqrt(r))
            b.copy_(torch.from_numpy(sigma * rng.standard_normal(b.shape)))


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy().astype("<f4")


def base_model():
    return LlamaForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()


def make_adapter(spec, rng, ids, base_logits):
    name = spec["name"]
    d = OUT / name
    cfg = {k: v for k, v in spec.items() if k not in ("name", "save_dtype", "fifo")}
    model = get_peft_model(base_model(), LoraConfig(task_type="CAUSAL_LM", **cfg)).eval()
    randomize(model, rng)
    save_dtype = spec.get("save_dtype")
    if save_dtype is not None:
        # Saved in a 16-bit type: the adapter lloco reads holds the rounded
        # values, so the reference is computed from the same ones.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(p.to(save_dtype).float())
    model_dtype_logits = logits_of(model, ids)
    if save_dtype is not None:
        for n, mod in model.named_modules():
            if n.endswith("lora_A") or n.endswith("lora_B"):
                mod.to(save_dtype)
    model.save_pretrained(d)
    (d / "README.md").unlink()  # PEFT's empty model card
    cfg_path = d / "adapter_config.json"
    saved = json.loads(cfg_path.read_text())
    saved["base_model_name_or_path"] = "tests/fixtures/tiny-llama/hf"  # not this machine's path
    if isinstance(saved["target_modules"], list):  # saved from a set: order varies by run
        saved["target_modules"].sort()
    if spec.get("fifo"):
        assert saved["fan_in_fan_out"] is False  # what PEFT writes for nn.Linear
        saved["fan_in_fan_out"] = True
    cfg_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    # The references: PEFT loading exactly the files written.
    loaded = PeftModel.from_pretrained(base_model(), d).eval()
    logits = logits_of(loaded, ids)
    assert np.allclose(logits, model_dtype_logits, atol=1e-4), f"{name}: reload differs"
    delta = float(np.sqrt(np.mean((logits - base_logits) ** 2)))
    assert delta > 0.05, f"{name}: adapter barely changes the logits ({delta})"
    merged = logits_of(loaded.merge_and_unload(), ids)
    logits.tofile(OUT / f"{name}.logits.f32")
    merged.tofile(OUT / f"{name}.merged_logits.f32")
    from safetensors import safe_open
    with safe_open(d / "adapter_model.safetensors", "pt") as f:
        tensors = {k: [str(f.get_slice(k).get_dtype()), list(f.get_slice(k).get_shape())]
                   for k in f.keys()}
    return {
        "dir": name,
        "r": spec["r"],
        "lora_alpha": spec["lora_alpha"],
        "use_rslora": bool(spec.get("use_rslora", False)),
        "fan_in_fan_out": bool(saved["fan_in_fan_out"]),
        "n_tensors": len(tensors),
        "tensors_dtype": sorted({v[0] for v in tensors.values()}),
        "logits": {"file": f"{name}.logits.f32", "shape": list(logits.shape)},
        "merged_logits": {"file": f"{name}.merged_logits.f32", "shape": list(merged.shape)},
        "logits_rms_change": round(delta, 4),
        "merged_vs_unmerged_max_abs": float(np.max(np.abs(merged - logits))),
    }


def convert_gguf(llama_cpp, name, outtype):
    out = OUT / "gguf" / f"{name}-{outtype}.gguf"
    subprocess.run([sys.executable, str(Path(llama_cpp) / "convert_lora_to_gguf.py"),
                    "--base", str(BASE), "--outtype", outtype, "--outfile", str(out),
                    str(OUT / name)], check=True, capture_output=True)
    return {"file": f"gguf/{out.name}", "from": name, "outtype": outtype}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp", required=True,
                    help="llama.cpp source tree holding convert_lora_to_gguf.py")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    for p in OUT.iterdir():
        if p.name != "README.md":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    tiny_ref = json.loads((BASE.parent / "ref.json").read_text())
    ids = tiny_ref["tokens"]
    base_logits = logits_of(base_model(), ids)
    hf_ref = np.fromfile(BASE.parent / "ref" / "hf.logits.f32", dtype="<f4").reshape(base_logits.shape)
    assert np.allclose(base_logits, hf_ref, atol=1e-4), "base model differs from tiny-llama's reference"

    adapters = {spec["name"]: make_adapter(spec, rng, ids, base_logits) for spec in ADAPTERS}
    (OUT / "gguf").mkdir()
    gguf = [convert_gguf(args.llama_cpp, name, outtype) for name, outtype in GGUF]
    ref = {
        "generator": "tests/tools/make_tiny_lora.py",
        "seed": SEED,
        "base": "tiny-llama/hf",
        "versions": {p: importlib.metadata.version(p)
                     for p in ("torch", "transformers", "peft", "numpy")},
        "tokens": ids,
        "adapters": adapters,
        "gguf": gguf,
        "gguf_converter": Path(args.llama_cpp).resolve().parent.parent.name + "/vendor/llama.cpp",
    }
    (OUT / "ref.json").write_text(json.dumps(ref, indent=2) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
