"""Weight quantization (guanaco_rt.quantize and _kernels._quantize) against llama.cpp's own ggml.

The oracle is the llama.cpp peer (a Python with llama-cpp-python: GUANACO_RT_PEER_PYTHON, else
/work/peer-llama/bin/python): tests/peer_ggml_quantize.py calls its ggml_quantize_chunk with no
importance matrix, which is what llama-quantize does. Tests that need it skip without it.
"""
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from guanaco_rt import ggml_types as T
from guanaco_rt._kernels import _quantize as Q
from guanaco_rt.errors import InvalidArgumentError

HERE = os.path.dirname(os.path.abspath(__file__))
ROW_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12,
             "Q5_K": 13, "Q6_K": 14, "IQ4_NL": 20}


def peer_python():
    p = os.environ.get("GUANACO_RT_PEER_PYTHON") or "/work/peer-llama/bin/python"
    if not os.path.exists(p):
        return None
    ok = subprocess.run([p, "-c", "import llama_cpp"], capture_output=True).returncode == 0
    return p if ok else None


class PeerQuantizer:
    """One long-lived peer process answering quantize requests (tests/peer_ggml_quantize.py)."""

    def __init__(self, python):
        self.proc = subprocess.Popen([python, os.path.join(HERE, "peer_ggml_quantize.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __call__(self, t, x, imatrix=None):
        x = np.ascontiguousarray(x, np.float32)
        qw = b"" if imatrix is None else np.ascontiguousarray(imatrix, np.float32).tobytes()
        self.proc.stdin.write(struct.pack("<4q", t, *x.shape, imatrix is not None) + x.tobytes() + qw)
        self.proc.stdin.flush()
        n = struct.unpack("<q", self.proc.stdout.read(8))[0]
        return np.frombuffer(self.proc.stdout.read(n), np.uint8).reshape(x.shape[0], -1)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def peer():
    python = peer_python()
    if python is None:
        pytest.skip("no llama.cpp peer: set GUANACO_RT_PEER_PYTHON to a Python that has llama_cpp")
    q = PeerQuantizer(python)
    yield q
    q.close()


def _rows(kind, scale_exp, seed, nrows, n):
    """nrows x n float32 rows of one family: normal, heavy-tailed, all zero, constant, one spike,
    positive only, small integers; scaled by 10**scale_exp"""
    rng = np.random.default_rng(seed)
    shape = (nrows, n)
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "heavy":
        x = rng.standard_t(1.5, shape)
    elif kind == "zero":
        x = np.zeros(shape)
    elif kind == "constant":
        x = np.full(shape, rng.standard_normal())
    elif kind == "spike":
        x = rng.standard_normal(shape) * 1e-3
        x[:, rng.integers(0, n)] = rng.choice([-1.0, 1.0]) * 50
    elif kind == "positive":
        x = rng.random(shape)
    else:  # small integers: many exact ties between levels
        x = rng.integers(-8, 9, shape).astype(np.float64)
    return (x * 10.0 ** scale_exp).astype(np.float32)


KINDS = ["normal", "heavy", "zero", "constant", "spike", "positive", "integers"]


@pytest.mark.parametrize("name", list(ROW_TYPES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), scale_exp=st.integers(-30, 30), seed=st.integers(0, 2**32 - 1),
       nrows=st.integers(1, 6), nblocks=st.integers(1, 3))
def test_rows_match_ggml(peer, name, kind, scale_exp, seed, nrows, nblocks):
    t = ROW_TYPES[name]
    blck = Q.block_size(t)[0]
    x = _rows(kind, scale_exp, seed, nrows, blck * (nblocks if blck == 256 else 5 * nblocks))  # 32-wide: 160..480
    assert np.array_equal(Q.quantize_rows(t, x, 2), peer(t, x)), (name, kind, scale_exp, seed)


@pytest.mark.parametrize("name", list(ROW_TYPES))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=hnp.arrays(np.float32, (2, 256), elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=True)))
def test_arbitrary_floats_match_ggml(peer, name, x):
    """hypothesis' own floats: repeated values, subnormals, signed zeros, exact ties"""
    t = ROW_TYPES[name]
    assert np.array_equal(Q.quantize_rows(t, x, 1), peer(t, x)), name


@pytest.mark.parametrize("name", list(ROW_TYPES))
def test_rows_dequantize_close(name):
    """our bytes decode (by the runtime's own dequantizer) to within the type's step of the input:
    a check of the layout that needs no peer"""
    t = ROW_TYPES[name]
    x = np.random.default_rng(3).standard_normal((4, 512)).astype(np.float32)
    q = Q.quantize_rows(t, x, 1)
    from guanaco_rt._kernels import _quants
    y = _quants.dequantize(t, q.ravel(), x.size).reshape(x.shape)
    bits = {2: 4, 3: 4, 6: 5, 7: 5, 8: 8, 10: 2, 11: 3, 12: 4, 13: 5, 14: 6, 20: 4}[t]
    assert np.max(np.abs(y - x)) < 8.0 / 2 ** bits * 1.5


def test_rows_do_not_depend_on_threads():
    x = np.random.default_rng(4).standard_normal((37, 512)).astype(np.float32)
    for t in ROW_TYPES.values():
        a = Q.quantize_rows(t, x, 1)
        assert np.array_equal(a, Q.quantize_rows(t, x, 2))
        assert np.array_equal(a[5:6], Q.quantize_rows(t, x[5:6], 1))


def test_row_errors_are_typed():
    with pytest.raises(InvalidArgumentError, match="256"):
        Q.row_bytes(T.Q4_K, 576)
    with pytest.raises(InvalidArgumentError, match="type 1 "):
        Q.row_bytes(1, 64)
    with pytest.raises(InvalidArgumentError, match="2-D"):
        Q.quantize_rows(2, np.zeros(64, np.float32))


# ---- whole files: guanaco_rt.quantize against llama.cpp's llama_model_quantize ----------------

FILE_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
              "Q5_K_S", "Q5_K_M", "Q6_K"]


def peer_quantize(python, src, jobs, tmp_path, allow_requantize=False):
    """llama.cpp's files for [(file type name, ...)] -> {name: path}"""
    from guanaco_rt.quantizer import FILE_TYPES as IDS
    out = {f: str(tmp_path / f"peer-{f}.gguf") for f in jobs}
    cmd = [python, os.path.join(HERE, "peer_llama_quantize.py"), str(src), "2"]
    cmd += [f"{p}:{IDS[f][0]}" for f, p in out.items()] + (["--allow-requantize"] if allow_requantize else [])
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def assert_same_file(ours, theirs):
    """byte equality, and on a difference the first tensor or metadata key that differs"""
    a, b = open(ours, "rb").read(), open(theirs, "rb").read()
    if a == b:
        return
    from guanaco_rt import gguf_file
    ga, gb = gguf_file.parse(ours, a), gguf_file.parse(theirs, b)
    assert list(ga.metadata.items()) == list(gb.metadata.items())
    assert [(t.name, t.type, t.shape) for t in ga.tensors.values()] == \
        [(t.name, t.type, t.shape) for t in gb.tensors.values()]
    for t in ga.tensors.values():
        u = gb.tensors[t.name]
        assert a[t.offset:t.offset + t.nbytes] == b[u.offset:u.offset + u.nbytes], t.name
    raise AssertionError(f"{ours} and {theirs} differ outside the tensors and metadata")


def float_llama(path, n_embd, n_head, n_head_kv, n_layer, n_ff, tied, wtype=0, n_vocab=300, seed=0, eps=1e-5):
    """a random-weight llama GGUF whose 2-D weights are F32 (wtype 0), F16 (1) or BF16 (30), norms
    F32, with the keys llama.cpp's loader needs"""
    import gguf

    from guanaco_rt.writer import add_spm_vocab

    from helpers import add_llama_hparams, spm_vocab
    w = gguf.GGUFWriter(str(path), "llama")
    add_llama_hparams(w, n_layer, n_embd, n_ff, n_head, n_head_kv, eps=eps, n_ctx=2048, file_type=wtype)
    add_spm_vocab(w, spm_vocab(n_vocab))
    rng = np.random.default_rng(seed)
    hd = n_embd // n_head

    def add(name, shape):                 # shape in ggml order (ne0 first)
        x = rng.standard_t(5, tuple(reversed(shape))).astype(np.float32) * 0.02
        if len(shape) == 1 or wtype == 0:
            w.add_tensor(name, x if len(shape) > 1 else 1 + x)
        elif wtype == 1:
            w.add_tensor(name, x.astype(np.float16))
        else:
            bf = (x.view(np.uint32) >> 16).astype(np.uint16)
            w.add_tensor(name, bf.view(np.uint8).reshape(shape[1], -1), raw_dtype=gguf.GGMLQuantizationType.BF16)
    add("token_embd.weight", (n_embd, n_vocab))
    for i in range(n_layer):
        add(f"blk.{i}.attn_norm.weight", (n_embd,))
        add(f"blk.{i}.attn_q.weight", (n_embd, n_embd))
        add(f"blk.{i}.attn_k.weight", (n_embd, n_head_kv * hd))
        add(f"blk.{i}.attn_v.weight", (n_embd, n_head_kv * hd))
        add(f"blk.{i}.attn_output.weight", (n_embd, n_embd))
        add(f"blk.{i}.ffn_norm.weight", (n_embd,))
        add(f"blk.{i}.ffn_gate.weight", (n_embd, n_ff))
        add(f"blk.{i}.ffn_up.weight", (n_embd, n_ff))
        add(f"blk.{i}.ffn_down.weight", (n_ff, n_embd))
    add("output_norm.weight", (n_embd,))
    if not tied:
        add("output.weight", (n_embd, n_vocab))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.fixture(scope="module")
def peer_python_or_skip():
    python = peer_python()
    if python is None:
        pytest.skip("no llama.cpp peer: set GUANACO_RT_PEER_PYTHON to a Python that has llama_cpp")
    return python


@pytest.fixture(scope="module")
def f32_576(tmp_path_factory):
    """random F32 llama: 576 wide (rows not a multiple of 256: every k-quant falls back), GQA 3,
    4 layers (the 'more bits' layers differ), an output tensor of its own"""
    p = tmp_path_factory.mktemp("quant") / "f32-576.gguf"
    return float_llama(p, n_embd=576, n_head=9, n_head_kv=3, n_layer=4, n_ff=1536, tied=False)


@pytest.fixture(scope="module")
def f32_256(tmp_path_factory):
    """random F32 llama: 256 wide (no fallbacks), GQA 4, tied embeddings, 8 layers"""
    p = tmp_path_factory.mktemp("quant") / "f32-256.gguf"
    return float_llama(p, n_embd=256, n_head=8, n_head_kv=2, n_layer=8, n_ff=512, tied=True)


@pytest.mark.parametrize("which", ["f32_576", "f32_256"])
def test_files_match_llama_quantize(request, which, peer_python_or_skip, tmp_path):
    """all 14 file types, byte for byte: tensor data, types, order, metadata, padding"""
    import guanaco_rt
    src = request.getfixturevalue(which)
    # the 256-wide file is there for the k-quant mixes' rules (no fallbacks, GQA 4, tied embeddings)
    types = FILE_TYPES if which == "f32_576" else [f for f in FILE_TYPES if "_K" in f]
    theirs = peer_quantize(peer_python_or_skip, src, types, tmp_path)
    for f in types:
        ours = str(tmp_path / f"ours-{f}.gguf")
        guanaco_rt.quantize(src, ours, f, threads=2)
        assert_same_file(ours, theirs[f])


def test_file_metadata_and_layout(f32_576, tmp_path):
    """what llama.cpp writes, checked without the peer: the keys carried over in order with
    general.quantization_version and general.file_type last, llama.cpp's tensor order, 1-D
    tensors kept F32, the 576-wide fallbacks"""
    import guanaco_rt
    from guanaco_rt import gguf_file
    out = str(tmp_path / "q4km.gguf")
    types = guanaco_rt.quantize(f32_576, out, "q4_k_m", threads=1)
    gi = gguf_file.parse(f32_576, open(f32_576, "rb").read())
    go = gguf_file.parse(out, open(out, "rb").read())
    keys_in = [k for k in gi.metadata if k not in ("general.file_type", "general.quantization_version")]
    assert list(go.metadata)[:-2] == keys_in
    assert list(go.metadata)[-2:] == ["general.quantization_version", "general.file_type"]
    assert go.metadata["general.file_type"] == 15 and go.metadata["general.quantization_version"] == 2
    assert all(go.metadata[k] == gi.metadata[k] for k in keys_in)
    names = list(go.tensors)
    assert names[:3] == ["output.weight", "output_norm.weight", "token_embd.weight"]
    assert names[3:12] == sorted(n for n in names if n.startswith("blk.0."))
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert types["output.weight"] == "Q8_0"          # Q6_K, whose 256 does not divide 576
    assert types["blk.0.attn_q.weight"] == "Q5_0"    # Q4_K's fallback
    # ffn_down is 1536 wide; of 4 layers, 2 and 3 get more bits
    assert [types[f"blk.{i}.ffn_down.weight"] for i in range(4)] == ["Q4_K", "Q4_K", "Q6_K", "Q6_K"]
    assert all(t.offset % 32 == 0 for t in go.tensors.values())


def test_requantize_is_refused_unless_allowed(tmp_path, peer_python_or_skip):
    import guanaco_rt

    from helpers import write_llama_gguf
    src = write_llama_gguf(tmp_path / "q8.gguf", n_embd=256, n_head=4, n_head_kv=2, n_layer=2, n_ff=512,
                           wtype=8, emb_type=8)
    quantized = str(tmp_path / "q8-ctx.gguf")      # with the context length llama.cpp's loader needs
    float_llama(quantized, n_embd=256, n_head=4, n_head_kv=2, n_layer=2, n_ff=512, tied=True)
    guanaco_rt.quantize(quantized, src, "Q8_0")
    with pytest.raises(InvalidArgumentError, match=r"token_embd\.weight.*Q8_0.*allow_requantize"):
        guanaco_rt.quantize(src, str(tmp_path / "out.gguf"), "Q4_K_M")
    assert not os.path.exists(tmp_path / "out.gguf")
    theirs = peer_quantize(peer_python_or_skip, src, ["Q4_K_M", "Q4_0"], tmp_path, allow_requantize=True)
    for f in ("Q4_K_M", "Q4_0"):
        ours = str(tmp_path / f"ours-{f}.gguf")
        guanaco_rt.quantize(src, ours, f, allow_requantize=True, threads=2)
        assert_same_file(ours, theirs[f])


@pytest.mark.parametrize("wtype", [1, 30], ids=["F16", "BF16"])
def test_f16_and_bf16_inputs(wtype, tmp_path, peer_python_or_skip):
    import guanaco_rt
    src = float_llama(tmp_path / "in.gguf", n_embd=256, n_head=4, n_head_kv=4, n_layer=2, n_ff=512, tied=False,
                      wtype=wtype)
    theirs = peer_quantize(peer_python_or_skip, src, ["Q5_K_M", "Q8_0"], tmp_path)
    for f in ("Q5_K_M", "Q8_0"):
        ours = str(tmp_path / f"ours-{f}.gguf")
        guanaco_rt.quantize(src, ours, f, threads=2)
        assert_same_file(ours, theirs[f])


def test_errors_name_the_problem(f32_256, tmp_path):
    import guanaco_rt
    from guanaco_rt.errors import FormatError
    with pytest.raises(InvalidArgumentError, match="Q4_2"):
        guanaco_rt.quantize(f32_256, str(tmp_path / "o.gguf"), "Q4_2")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"ABCD" + bytes(60))
    with pytest.raises(FormatError, match="bad.bin"):
        guanaco_rt.quantize(str(bad), str(tmp_path / "o.gguf"), "Q4_0")


def test_progress_and_threads(f32_256, tmp_path):
    import guanaco_rt
    seen = []
    a, b = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    guanaco_rt.quantize(f32_256, a, "Q3_K_M", threads=1, progress=lambda i, n, name: seen.append((i, n, name)))
    guanaco_rt.quantize(f32_256, b, "Q3_K_M", threads=2)
    assert open(a, "rb").read() == open(b, "rb").read()
    assert [s[0] for s in seen] == list(range(len(seen))) and seen[-1][0] == seen[-1][1]


def test_cli_quantize(f32_256, tmp_path):
    import guanaco_rt
    # the guanaco_rt under test: the checkout when built in place, else the installed one (CI
    # installs it; the checkout's own tree is unbuilt there)
    root = os.path.dirname(os.path.dirname(os.path.abspath(guanaco_rt.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
           "GUANACO_RT_PROGRESS": "0"}
    out = str(tmp_path / "cli.gguf")
    # run from elsewhere than the checkout's root, whose guanaco_rt/ folder -m would take first
    r = subprocess.run([sys.executable, "-m", "guanaco_rt", "quantize", f32_256, out, "q4_1", "-t", "2"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "Q4_1" in r.stdout
    api = str(tmp_path / "api.gguf")
    guanaco_rt.quantize(f32_256, api, "Q4_1")
    assert open(out, "rb").read() == open(api, "rb").read()
    # a quantized input without --allow-requantize: a message naming the tensor, exit status 2
    r = subprocess.run([sys.executable, "-m", "guanaco_rt", "quantize", out, str(tmp_path / "re.gguf"), "Q8_0"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 2 and "requantiz" in r.stderr and "weight" in r.stderr
    r = subprocess.run([sys.executable, "-m", "guanaco_rt", "quantize", out, str(tmp_path / "re.gguf"), "Q8_0",
                        "--allow-requantize"], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr


def test_ggjt_input(tmp_path):
    """a 2023 ggjt v3 F32 file quantizes as the GGUF copy of it does"""
    import guanaco_rt
    from guanaco_rt.writer import ggjt_to_gguf, write_random_model
    src = str(tmp_path / "f32.bin")
    write_random_model(src, "f32", n_vocab=300, n_embd=256, n_mult=256, n_head=4, n_layer=2, seed=3)
    gg = str(tmp_path / "f32.gguf")
    ggjt_to_gguf(src, gg)
    a, b = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    guanaco_rt.quantize(src, a, "Q4_K_S", threads=2)
    guanaco_rt.quantize(gg, b, "Q4_K_S", threads=2)
    assert open(a, "rb").read() == open(b, "rb").read()
    m = guanaco_rt.Model(a)
    try:
        assert m is not None
    finally:
        m.close()


@pytest.mark.slow
def test_demo_model_all_types_match_llama_quantize(tmp_path, peer_python_or_skip):
    """the issue's target: the demo model's weights dequantized to F32 (gguf-py), quantized to every
    file type by both; about 3 minutes on 2 cores"""
    import gguf

    import guanaco_rt
    from guanaco_rt.demo import demo_model_path
    src = str(tmp_path / "smol-f32.gguf")
    dequantize_gguf_to_f32(demo_model_path(), src, gguf)
    theirs = peer_quantize(peer_python_or_skip, src, FILE_TYPES, tmp_path)
    for f in FILE_TYPES:
        ours = str(tmp_path / f"ours-{f}.gguf")
        guanaco_rt.quantize(src, ours, f, threads=2)
        assert_same_file(ours, theirs[f])
        os.remove(ours)
        os.remove(theirs[f])


def dequantize_gguf_to_f32(src, dst, gguf):
    """every tensor of a GGUF file dequantized to F32 by gguf-py, the metadata copied"""
    r = gguf.GGUFReader(src)
    arch = str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8")
    w = gguf.GGUFWriter(dst, arch)
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                val = [str(bytes(f.parts[i]), "utf-8") for i in f.data]
            else:
                val = [f.parts[i].tolist()[0] for i in f.data]
            w.add_key_value(k, val, vt, sub_type=sub)
        elif vt == gguf.GGUFValueType.STRING:
            w.add_key_value(k, str(bytes(f.parts[-1]), "utf-8"), vt)
        else:
            w.add_key_value(k, f.parts[-1].tolist()[0], vt)
    for t in r.tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, x.reshape(tuple(reversed([int(d) for d in t.shape]))))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_raw_f16_bf16_sources_equal_the_float_path():
    """quantize_raw_into converts F16/BF16 rows on each thread: the same bytes as converting first"""
    x = np.random.default_rng(5).standard_normal((9, 512)).astype(np.float32)
    h = x.astype(np.float16)
    bf = (x.view(np.uint32) >> 16).astype(np.uint16)
    for t in ROW_TYPES.values():
        for src_type, raw, as_f32 in ((0, x, x), (1, h, h.astype(np.float32)),
                                      (30, bf, (bf.astype(np.uint32) << 16).view(np.float32))):
            out = np.empty(9 * Q.row_bytes(t, 512), np.uint8)
            Q.quantize_raw_into(t, src_type, raw.view(np.uint8).ravel(), 512, out, 2)
            assert np.array_equal(out, Q.quantize_rows(t, as_f32, 1).ravel()), (t, src_type)
    with pytest.raises(InvalidArgumentError, match="source type 2"):
        Q.quantize_raw_into(2, 2, np.zeros(64, np.uint8), 32, np.zeros(18, np.uint8))


def test_rules_2025_fall_back_to_iq4_nl(f32_576, tmp_path, peer):
    """llama.cpp of 2025 sent 576-wide Q2_K/Q3_K tensors to IQ4_NL: the bytes are ggml's IQ4_NL"""
    import guanaco_rt
    from guanaco_rt import gguf_file
    out = str(tmp_path / "q3ks-2025.gguf")
    types = guanaco_rt.quantize(f32_576, out, "Q3_K_S", threads=2, rules="2025")
    assert types["blk.0.attn_q.weight"] == "IQ4_NL" and types["blk.0.ffn_down.weight"] == "Q3_K"
    now = guanaco_rt.quantize(f32_576, str(tmp_path / "q3ks.gguf"), "Q3_K_S", threads=2)
    assert now["blk.0.attn_q.weight"] == "Q4_0"
    gi = gguf_file.parse(f32_576, open(f32_576, "rb").read())
    raw_in, raw_out = open(f32_576, "rb").read(), open(out, "rb").read()
    go = gguf_file.parse(out, raw_out)
    t, u = gi.tensors["blk.1.attn_q.weight"], go.tensors["blk.1.attn_q.weight"]
    x = np.frombuffer(raw_in, np.float32, t.nbytes // 4, t.offset).reshape(576, 576)
    assert raw_out[u.offset:u.offset + u.nbytes] == peer(20, x).tobytes()
    with pytest.raises(InvalidArgumentError, match="2024"):
        guanaco_rt.quantize(f32_576, out, "Q4_0", rules="2024")


def test_rows_not_a_multiple_of_32_are_f16(tmp_path, peer_python_or_skip):
    """a 700-wide ffn_down under Q4_0 / Q8_0 / Q4_K_M: the 32-block types have no smaller fallback and
    today's llama.cpp writes F16 (it used to stop: rules="2025" refuses, naming the tensor)"""
    import guanaco_rt
    src = float_llama(tmp_path / "in.gguf", n_embd=256, n_head=4, n_head_kv=4, n_layer=1, n_ff=700, tied=False)
    theirs = peer_quantize(peer_python_or_skip, src, ["Q4_0", "Q8_0", "Q4_K_M"], tmp_path)
    for f in ("Q4_0", "Q8_0", "Q4_K_M"):
        ours = str(tmp_path / f"ours-{f}.gguf")
        assert guanaco_rt.quantize(src, ours, f, threads=2)["blk.0.ffn_down.weight"] == "F16"
        assert_same_file(ours, theirs[f])
    with pytest.raises(InvalidArgumentError, match=r"ffn_down\.weight.*700.*2025"):
        guanaco_rt.quantize(src, str(tmp_path / "o.gguf"), "Q4_0", rules="2025")


def test_output_that_is_the_input_is_refused(tmp_path):
    from guanaco_rt import quantize
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(InvalidArgumentError, match="is the input file"):
        quantize(src, src, "Q4_0")
    assert src.read_bytes() == b"GGUF" + bytes(60)
