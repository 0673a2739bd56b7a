"""The real vocabularies of the model families (Qwen2/2.5/3, Llama 3, Phi-3), as vocab-only
GGUF files from llama.cpp's models/ folder, and HF ``tokenizers`` references built from the
same tokens and merges. See tests/data/vocab/README.md for where each file comes from.

Qwen2 (Apache-2.0) and Phi-3 (MIT) are in tests/data/vocab, xz-compressed. Llama 3's
(Llama 3 Community License) and Qwen3.5's are fetched on first use from the llama-cpp-python
source distribution on PyPI, which ships llama.cpp's models/ folder, checked by SHA-256 and
cached in the demo model's cache folder (llama.cpp-vocab/); a test that needs one skips when it cannot be
fetched (offline), saying why.
"""
import lzma
import mmap
import os
import subprocess
import sys
import tarfile
import tempfile

import pytest

from guanaco_rt.demo import cache_dir, file_sha256

DATA = os.path.join(os.path.dirname(__file__), "data", "vocab")
TEMPLATES = os.path.join(os.path.dirname(__file__), "data", "templates")
SDIST = "llama-cpp-python==0.3.36"
SDIST_MODELS = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
FETCHED = {"llama-bpe": "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e",
           "qwen35": "63ed952ff338996cf0bdf24a7b10015124273f75c6dc9bb427356aa3f67ec62c"}
CACHE = os.path.join(cache_dir(), "llama.cpp-vocab")   # GUANACO_RT_CACHE, as the demo model's

# the pre-tokenizer regexes as the families' tokenizer.json files write them (llama.cpp rewrites
# the case-insensitive group; HF's Rust `tokenizers` runs them as they are)
HF_REGEX = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
             r"|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+",
}
# Llama 3's tokenizer.json has "ignore_merges": true; Qwen2's has not
HF_IGNORE_MERGES = {"qwen2": False, "llama-bpe": True}


def _fetch(name, dest):
    """ggml-vocab-<name>.gguf out of llama-cpp-python's sdist (pip download), into dest."""
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "--disable-pip-version-check", "-q", SDIST, "-d", tmp],
                           capture_output=True, text=True, timeout=900)
        if r.returncode:
            raise OSError(f"pip download {SDIST} failed: {r.stderr.strip()[-300:]}")
        (sdist,) = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".tar.gz")]
        with tarfile.open(sdist) as tar:
            member = tar.getmember(SDIST_MODELS + f"ggml-vocab-{name}.gguf")
            with tar.extractfile(member) as src, open(dest + ".part", "wb") as out:
                out.write(src.read())
    os.replace(dest + ".part", dest)


def vocab_path(name, tmp_root):
    """The path of ggml-vocab-<name>.gguf: decompressed from tests/data, or fetched (cached)."""
    packed = os.path.join(DATA, f"ggml-vocab-{name}.gguf.xz")
    if os.path.exists(packed):
        path = os.path.join(str(tmp_root), f"ggml-vocab-{name}.gguf")
        if not os.path.exists(path):
            with lzma.open(packed) as src, open(path, "wb") as out:
                out.write(src.read())
        return path
    path = os.path.join(os.environ.get("GUANACO_RT_VOCAB_CACHE", CACHE), f"ggml-vocab-{name}.gguf")
    if not (os.path.exists(path) and file_sha256(path) == FETCHED[name]):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            _fetch(name, path)
        except (OSError, subprocess.SubprocessError, KeyError, ValueError) as e:
            pytest.skip(f"ggml-vocab-{name}.gguf could not be fetched from PyPI ({SDIST}): {e}")
        if file_sha256(path) != FETCHED[name]:
            os.remove(path)
            pytest.fail(f"ggml-vocab-{name}.gguf from {SDIST} has an unexpected SHA-256")
    return path


def cases(name):
    """llama.cpp's test strings for a vocabulary and the ids llama.cpp's tokenizer gives each
    (test-tokenizer-0: no BOS, special tokens not parsed)."""
    with open(os.path.join(DATA, f"ggml-vocab-{name}.gguf.inp"), encoding="utf-8", newline="") as f:
        texts = f.read().split("\n__ggml_vocab_test__\n")
    with open(os.path.join(DATA, f"ggml-vocab-{name}.gguf.out"), encoding="utf-8") as f:
        ids = [[int(x) for x in line.split()] for line in f.read().split("\n")]
    return list(zip(texts, ids[:len(texts)]))


def load_vocab(path):
    """A vocab-only GGUF -> (the loader's vocab dict, our tokenizer), as Model builds them."""
    from guanaco_rt import gguf_file, gguf_model
    from guanaco_rt.model import _gguf_tokenizer
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    g = gguf_file.parse(path, mm)
    vocab = gguf_model._vocab(g, len(g.metadata["tokenizer.ggml.tokens"]))
    return vocab, _gguf_tokenizer(vocab, path)


def hf_bpe(vocab, name):
    """HF's Rust byte-level BPE over the same tokens and merges, with the pre-tokenizer of the
    family's tokenizer.json; CONTROL and USER_DEFINED tokens are its added tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    tokens, types = vocab["tokens"], vocab["types"]
    bpe = models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ", 1)) for m in vocab["merges"]],
                     ignore_merges=HF_IGNORE_MERGES[name])
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(HF_REGEX[name]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types)
                           if ty in (3, 4)])
    return tk


def template(name):
    with open(os.path.join(TEMPLATES, name + ".jinja"), encoding="utf-8") as f:
        return f.read()
