"""GGUF reader: agrees with gguf-py (files written by llama.cpp and by gguf-py's writer),
and every malformed file ends in FormatError and nothing else."""
import os
import struct

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guanaco_rt import ggml_types as T
from guanaco_rt import gguf_file as G
from guanaco_rt.errors import FormatError, UnsupportedVersionError
from guanaco_rt.writer import random_tensor_bytes

GQ = gguf.GGMLQuantizationType


def reference(path):
    """(metadata, tensors) as gguf-py's reader sees them."""
    r = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (int(t.tensor_type), tuple(int(d) for d in t.shape), int(t.data_offset), int(t.n_bytes))
               for t in r.tensors}
    return meta, tensors


def same_value(a, b):
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return np.float32(a) == np.float32(b) or a == b
    return a == b


def check_against_gguf_py(path):
    g = G.parse(path, open(path, "rb").read())
    meta, tensors = reference(path)
    assert set(g.metadata) == set(meta)
    for k, v in meta.items():
        ours = g.metadata[k]
        if g.types[k] == "array[array]":       # gguf-py's contents() flattens arrays of arrays
            ours = [x for sub in ours for x in sub]
        assert same_value(ours, v), k
    assert {n: (t.type, t.shape, t.offset, t.nbytes) for n, t in g.tensors.items()} == tensors
    return g


def test_the_llama_cpp_vocab_file(shared_data):
    g = check_against_gguf_py(os.path.join(shared_data, "ggml-vocab-llama-spm.gguf"))
    assert g.version == 3 and g.metadata["general.architecture"] == "llama"
    assert g.types["tokenizer.ggml.tokens"] == "array[string]" and len(g.metadata["tokenizer.ggml.tokens"]) == 32000


def write_gguf(path, tensors=(("tok_embeddings", T.Q4_0, (64, 8)), ("norm", T.F32, (64,)), ("w", T.Q4_K, (256, 3)),
                              ("h", T.F16, (32, 2)), ("q", T.Q8_0, (32, 5))), alignment=None):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_string("tokenizer.chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "▁a", "日本"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.25, 3.0])
    w.add_int64("x.i64", -(2**40))
    w.add_float64("x.f64", 0.1)
    w.add_array("x.nested", [[1, 2], [3]])
    if alignment:
        w.add_custom_alignment(alignment)
    rng = np.random.default_rng(0)
    for name, ttype, shape in tensors:
        raw = np.frombuffer(random_tensor_bytes(ttype, shape, rng), np.uint8)
        rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if ttype in (T.F32, T.F16):
            w.add_tensor(name, raw.view(np.float32 if ttype == T.F32 else np.float16).reshape(tuple(reversed(shape))))
        else:       # quantized: the bytes of each row, gguf-py works out the element shape
            w.add_tensor(name, raw.reshape(rows, -1) if len(shape) > 1 else raw, raw_dtype=GQ(ttype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("gguf") / "m.gguf")


def test_files_written_by_gguf_py(written, tmp_path):
    g = check_against_gguf_py(written)
    assert g.tensors["w"].shape == (256, 3) and g.tensors["w"].type == T.Q4_K
    assert g.metadata["x.nested"] == [[1, 2], [3]] and g.types["x.nested"] == "array[array]"
    g64 = check_against_gguf_py(write_gguf(tmp_path / "a64.gguf", alignment=64))
    assert g64.alignment == 64 and all(t.offset % 64 == 0 for t in g64.tensors.values())


def parse_bytes(data):
    return G.parse("t.gguf", data)


@given(cut=st.integers(0, 10**6))
@settings(max_examples=150)
def test_every_truncation_is_a_format_error(written, cut):
    data = open(written, "rb").read()
    g = parse_bytes(data)
    end = max(t.offset + t.nbytes for t in g.tensors.values())    # gguf-py pads the file after the last tensor
    cut %= end
    with pytest.raises(FormatError):
        parse_bytes(data[:cut])
    parse_bytes(data[:end])


@given(pos=st.integers(0, 10**6), bit=st.integers(0, 7))
@settings(max_examples=300)
def test_bit_flips_in_the_header_parse_or_fail_typed(written, pos, bit):
    data = bytearray(open(written, "rb").read())
    g = parse_bytes(bytes(data))
    pos %= g.data_offset
    data[pos] ^= 1 << bit
    try:
        parse_bytes(bytes(data))
    except FormatError:
        pass


def header(version=3, n_tensors=0, n_kv=0):
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def kv(key, vtype, payload):
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + payload


def tensor(name, dims, ttype, offset):
    n = name.encode()
    return struct.pack("<Q", len(n)) + n + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + \
        struct.pack("<IQ", ttype, offset)


def pad(b, a=32):
    return b + b"\0" * (-len(b) % a)


@pytest.mark.parametrize("data, field", [
    (header(n_kv=2**40), "n_kv"),
    (header(n_tensors=2**40), "n_tensors"),
    (header(n_kv=1) + kv("a", 13, b""), "type"),
    (header(n_kv=1) + kv("a", 9, struct.pack("<IQ", 4, 2**60)), "array"),
    (header(n_kv=1) + kv("a", 9, struct.pack("<IQ", 99, 1)), "element type"),
    (header(n_kv=1) + kv("a", 8, struct.pack("<Q", 2**62)), "a"),
    (header(n_kv=1) + kv("a", 7, b"\x02"), "bool"),
    (header(n_kv=1) + struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<I", 4) + b"\0" * 4, "key"),
    (header(n_kv=2) + kv("a", 4, b"\0" * 4) + kv("a", 4, b"\0" * 4), "duplicate"),
    (header(n_kv=1) + kv("a", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 0)),
     "nest"),
    (header(n_kv=1) + kv("general.alignment", 4, struct.pack("<I", 24)), "alignment"),
    (header(n_kv=1) + kv("general.alignment", 5, struct.pack("<i", 32)), "alignment"),
    (pad(header(n_tensors=1) + tensor("t", [], 0, 0)) + b"\0" * 64, "n_dims"),
    (pad(header(n_tensors=1) + tensor("t", [4, 1, 1, 1, 1], 0, 0)) + b"\0" * 64, "n_dims"),
    (pad(header(n_tensors=1) + tensor("t", [0], 0, 0)) + b"\0" * 64, "shape"),
    (pad(header(n_tensors=1) + tensor("t", [2**62, 2**62], 0, 0)) + b"\0" * 64, "shape"),
    (pad(header(n_tensors=1) + tensor("t", [32], 28, 0)) + b"\0" * 64, "type"),
    (pad(header(n_tensors=1) + tensor("t", [48], 2, 0)) + b"\0" * 64, "block size"),
    (pad(header(n_tensors=1) + tensor("t", [8], 0, 8)) + b"\0" * 64, "alignment"),
    (pad(header(n_tensors=1) + tensor("t", [64], 0, 0)) + b"\0" * 64, "past the end"),
    (pad(header(n_tensors=2) + tensor("t", [4], 0, 0) + tensor("t", [4], 0, 32)) + b"\0" * 64, "duplicate"),
])
def test_crafted_fields_name_the_field(data, field):
    with pytest.raises(FormatError, match=field):
        parse_bytes(data)


def test_versions():
    with pytest.raises(UnsupportedVersionError, match="version 1"):
        parse_bytes(header(version=1))
    assert parse_bytes(header(version=2)).version == 2
    with pytest.raises(FormatError, match="magic"):
        parse_bytes(b"GGUX" + header()[4:])
