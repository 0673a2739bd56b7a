"""A real conversion: a LoRA adapter made with PEFT on the demo model's float weights (its GGUF
dequantized by transformers), converted by llama.cpp's convert_lora_to_gguf.py, loaded here; its
logits against PEFT's own forward. Needs torch, transformers, peft (the test-peft extra) and a
llama.cpp source tree (GUANACO_RT_LLAMA_CPP, or the one llama-cpp-python's sdist vendors);
offline, about a minute: slow."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import guanaco_rt

pytestmark = pytest.mark.slow


def llama_cpp_dir():
    for d in [os.environ.get("GUANACO_RT_LLAMA_CPP", "")] + sorted(glob.glob("/tmp/lcp_dl/*/vendor/llama.cpp")):
        if d and os.path.exists(os.path.join(d, "convert_lora_to_gguf.py")):
            return d
    pytest.skip("no llama.cpp source tree with convert_lora_to_gguf.py (set GUANACO_RT_LLAMA_CPP)")


def metrics(ours, ref):
    rel = np.abs(ours - ref).max(1) / np.abs(ref).max(1)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    return rel, cos


def test_peft_adapter_converted_by_llama_cpp_matches_peft(smollm2, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    converter = os.path.join(llama_cpp_dir(), "convert_lora_to_gguf.py")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(smollm2), gguf_file=os.path.basename(smollm2), torch_dtype=torch.float32)
    # the base model's config, which the converter reads (a GGUF-loaded config names no architecture)
    base_dir = tmp_path / "base"
    hf.config.save_pretrained(base_dir)
    cfg = json.loads((base_dir / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg.pop("quantization_config", None)
    (base_dir / "config.json").write_text(json.dumps(cfg))
    m = guanaco_rt.Model(smollm2)
    ids = m.tokenize("The capital of France is Paris, and the capital of Germany is")
    with torch.no_grad():
        hf_base = hf(torch.tensor([ids])).logits[0].double().numpy()
    lcfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False,
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    pm = peft.get_peft_model(hf, lcfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                    # a trained adapter's size: B A about 5% of W
        for name, p in pm.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        peft_logits = pm(torch.tensor([ids])).logits[0].double().numpy()
    pm.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "adapter.gguf"
    r = subprocess.run([sys.executable, converter, str(tmp_path / "adapter"), "--base", str(base_dir), "--outfile",
                        str(out), "--outtype", "f32"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    base = guanaco_rt.Session(m, n_ctx=64).eval(ids, all_logits=True)
    ours = guanaco_rt.Session(m, n_ctx=64, lora=[(str(out), 1.0)]).eval(ids, all_logits=True)
    rel0, cos0 = metrics(base, hf_base)
    rel, cos = metrics(ours, peft_logits)
    effect, _ = metrics(hf_base, peft_logits)
    print(f"PEFT adapter (r 8, alpha 16) through convert_lora_to_gguf.py: ours vs PEFT max rel {rel.max():.4f} mean "
          f"{rel.mean():.4f} min cos {cos.min():.5f}; base vs transformers max rel {rel0.max():.4f} mean "
          f"{rel0.mean():.4f} min cos {cos0.min():.5f}; the adapter moves PEFT's logits by max rel {effect.max():.4f}")
    assert effect.max() > 0.1                          # the adapter matters
    # the bounds of the base type (test_gguf_model's SmolLM2 test: max 0.08, cosine 0.99)
    assert rel.max() < 0.08 and cos.min() > 0.99
    assert rel.mean() < 1.5 * rel0.mean()
    assert (ours.argmax(1) == peft_logits.argmax(1)).mean() >= 0.8
