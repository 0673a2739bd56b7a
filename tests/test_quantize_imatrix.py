"""Quantization with an importance matrix (guanaco_rt.quantize(..., imatrix=), guanaco-rt quantize
--imatrix) against llama.cpp.

Three oracles, each skipped when absent:
- the row quantizers: ggml_quantize_chunk with quant_weights, in the llama.cpp peer's Python
  (tests/peer_ggml_quantize.py);
- whole files from an importance dict: llama_model_quantize with params.imatrix, in the same peer
  (tests/peer_llama_quantize.py --imatrix-npz);
- whole files from imatrix files: the llama-quantize and llama-imatrix binaries of the same
  llama.cpp (GUANACO_RT_LLAMA_BIN: the folder holding them; built from the peer's vendored source
  with cmake), which read the files with llama.cpp's own loader and write the quantize.imatrix.* keys.
"""
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_quantize import FILE_TYPES, HERE, KINDS, ROW_TYPES, PeerQuantizer, _rows, assert_same_file, float_llama
from test_quantize import peer_python as find_peer_python

import guanaco_rt
from guanaco_rt._kernels import _quantize as Q
from guanaco_rt.errors import FormatError, InvalidArgumentError


@pytest.fixture(scope="module")
def peer_python_or_skip():
    python = find_peer_python()
    if python is None:
        pytest.skip("no llama.cpp peer: set GUANACO_RT_PEER_PYTHON to a Python that has llama_cpp")
    return python


@pytest.fixture(scope="module")
def peer(peer_python_or_skip):
    q = PeerQuantizer(peer_python_or_skip)
    yield q
    q.close()


def llama_bin(name):
    d = os.environ.get("GUANACO_RT_LLAMA_BIN") or "/tmp/lcpq_build/bin"
    p = os.path.join(d, name)
    return p if os.path.exists(p) else shutil.which(name)


@pytest.fixture(scope="module")
def llama_quantize():
    p = llama_bin("llama-quantize")
    if p is None:
        pytest.skip("no llama-quantize: set GUANACO_RT_LLAMA_BIN to the folder of a llama.cpp build")
    return p


def _importance(rng, n):
    """importances as llama-imatrix makes them: non-negative, spread over orders of magnitude, some
    columns never activated (0)"""
    qw = (rng.random(n) ** 3 * 10.0 ** rng.uniform(-3, 3, n)).astype(np.float32)
    qw[rng.integers(0, n, n // 16)] = 0
    return qw


# ---- rows ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ROW_TYPES))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), scale_exp=st.integers(-20, 20), seed=st.integers(0, 2**32 - 1),
       nrows=st.integers(1, 4), nblocks=st.integers(1, 3), qw_kind=st.sampled_from(["spread", "ones", "sparse"]))
def test_rows_with_imatrix_match_ggml(peer, name, kind, scale_exp, seed, nrows, nblocks, qw_kind):
    t = ROW_TYPES[name]
    blck = Q.block_size(t)[0]
    n = blck * (nblocks if blck == 256 else 5 * nblocks + 1)       # 32-wide: an odd block count too
    x = _rows(kind, scale_exp, seed, nrows, n)
    rng = np.random.default_rng(seed)
    qw = {"spread": lambda: _importance(rng, n), "ones": lambda: np.ones(n, np.float32),
          "sparse": lambda: (rng.random(n) < 0.1).astype(np.float32) * 3}[qw_kind]()
    assert np.array_equal(Q.quantize_rows(t, x, 2, imatrix=qw), peer(t, x, qw)), (name, kind, scale_exp, seed)


def test_experts_take_their_own_slice():
    """a 3-D weight's expert e quantizes with entries [e*ne0, (e+1)*ne0), as llama.cpp slices them"""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 256)).astype(np.float32)
    qw = _importance(rng, 3 * 256)
    whole = Q.quantize_rows(12, x, 2, imatrix=qw, rows_per_expert=2)
    for e in range(3):
        part = Q.quantize_rows(12, x[2 * e:2 * e + 2], 1, imatrix=qw[256 * e:256 * (e + 1)])
        assert np.array_equal(whole[2 * e:2 * e + 2], part)
    assert not np.array_equal(whole, Q.quantize_rows(12, x, 1, imatrix=qw[:256]))
    with pytest.raises(InvalidArgumentError, match="768 values"):
        Q.quantize_rows(12, x, 1, imatrix=qw, rows_per_expert=3)


def test_q8_0_ignores_the_imatrix_and_others_do_not():
    x = np.random.default_rng(2).standard_normal((4, 512)).astype(np.float32)
    qw = _importance(np.random.default_rng(3), 512)
    assert np.array_equal(Q.quantize_rows(8, x, 1, imatrix=qw), Q.quantize_rows(8, x, 1))
    for t in (2, 3, 6, 7, 10, 11, 12, 13, 14, 20):
        assert not np.array_equal(Q.quantize_rows(t, x, 1, imatrix=qw), Q.quantize_rows(t, x, 1)), t


# ---- imatrix files ------------------------------------------------------------------------

def write_legacy(path, entries, ncall, chunk_count=None, dataset=None):
    """llama-imatrix's .dat: values stored as mean * ncall, as its save_imatrix_legacy does"""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, v in entries.items():
            b = name.encode()
            f.write(struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, v.size))
            f.write((v * np.float32(ncall)).astype(np.float32).tobytes())
        if chunk_count is not None:
            f.write(struct.pack("<i", chunk_count))
            d = (dataset or "").encode()
            f.write(struct.pack("<i", len(d)) + d)
    return str(path)


def write_gguf_imatrix(path, sums, counts, meta=True, dataset="calib.txt", chunk_count=7):
    """llama-imatrix's GGUF: <name>.in_sum2 (ne0 x n_expert) and <name>.counts (1 x n_expert)"""
    import gguf
    w = gguf.GGUFWriter(str(path), "imatrix")       # gguf-py always writes general.architecture
    w.add_string("general.type", "imatrix")
    if meta:
        w.add_array("imatrix.datasets", [dataset])
        w.add_uint32("imatrix.chunk_count", chunk_count)
        w.add_uint32("imatrix.chunk_size", 512)
    for name in sorted(sums):
        s, c = sums[name], np.asarray(counts[name], np.float32)
        w.add_tensor(f"{name}.in_sum2", s.reshape(c.size, -1).astype(np.float32))
        w.add_tensor(f"{name}.counts", c.reshape(c.size, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def model_importance(src, seed=0):
    """an importance per column of every 2-D weight of a model file (the token embeddings too, at
    the wrong size: llama-imatrix never sees them multiply, and llama.cpp skips a mismatch there)"""
    from guanaco_rt import gguf_file
    g = gguf_file.parse(src, open(src, "rb").read())
    rng = np.random.default_rng(seed)
    out = {}
    for t in g.tensors.values():
        if len(t.shape) >= 2 and t.name.endswith(".weight"):
            out[t.name] = _importance(rng, t.shape[0] + (7 if t.name == "token_embd.weight" else 0))
    return out


def test_legacy_and_gguf_files_read_as_llama_quantize_reads_them(tmp_path):
    from guanaco_rt import imatrix
    rng = np.random.default_rng(4)
    mean = {"blk.0.ffn_down.weight": _importance(rng, 64), "blk.0.attn_q.weight": _importance(rng, 32)}
    im = imatrix.load(write_legacy(tmp_path / "a.dat", mean, ncall=10, chunk_count=3, dataset="wiki.txt"))
    assert im.legacy and im.chunk_count == 3 and im.datasets == ["wiki.txt"]
    for k, v in mean.items():
        assert np.array_equal(im.entries[k], (v * np.float32(10)) / np.float32(10))
    im = imatrix.load(write_legacy(tmp_path / "b.dat", mean, ncall=4))     # no trailer
    assert im.chunk_count == 0 and im.datasets == []
    # GGUF: sums / counts per expert; an expert that saw nothing gets importance 1
    sums = {"blk.0.ffn_down_exps.weight": np.arange(12, dtype=np.float32) * 3}
    im = imatrix.load(write_gguf_imatrix(tmp_path / "c.gguf", sums, {"blk.0.ffn_down_exps.weight": [3, 0, 6]}))
    assert not im.legacy and im.chunk_count == 7 and im.datasets == ["calib.txt"]
    want = np.concatenate([np.arange(4) * 3 / 3, np.ones(4), np.arange(8, 12) * 3 / 6]).astype(np.float32)
    assert np.array_equal(im.entries["blk.0.ffn_down_exps.weight"], want)


def test_imatrix_file_errors_are_typed(tmp_path):
    from guanaco_rt import imatrix
    p = tmp_path / "bad.dat"
    p.write_bytes(struct.pack("<i", 0))
    with pytest.raises(FormatError, match=r"bad\.dat: n_entries: 0"):
        imatrix.load(p)
    p.write_bytes(struct.pack("<i", 1) + struct.pack("<i", 3) + b"abc" + struct.pack("<ii", 1, 4) + bytes(8))
    with pytest.raises(FormatError, match=r"entry 'abc' values.*8 bytes short"):
        imatrix.load(p)
    p.write_bytes(struct.pack("<i", 1) + struct.pack("<i", 1) + b"a" + struct.pack("<ii", 1, 1)
                  + np.float32(np.nan).tobytes())
    with pytest.raises(FormatError, match="non-finite"):
        imatrix.load(p)
    g = write_gguf_imatrix(tmp_path / "nometa.gguf", {"a.weight": np.ones(4, np.float32)}, {"a.weight": [1]},
                           meta=False)
    with pytest.raises(FormatError, match="imatrix.datasets"):
        imatrix.load(g)


def test_wrong_size_entry_names_the_tensor(f32_256, tmp_path):
    import guanaco_rt
    qw = model_importance(f32_256)
    qw["blk.1.attn_q.weight"] = qw["blk.1.attn_q.weight"][:128]
    with pytest.raises(FormatError, match=r"blk\.1\.attn_q\.weight.*128 values.*256"):
        guanaco_rt.quantize(f32_256, str(tmp_path / "o.gguf"), "Q4_K_M", imatrix=qw)
    assert not os.path.exists(tmp_path / "o.gguf")


@pytest.fixture(scope="module")
def f32_576(tmp_path_factory):
    p = tmp_path_factory.mktemp("quant-im") / "f32-576.gguf"
    return float_llama(p, n_embd=576, n_head=9, n_head_kv=3, n_layer=8, n_ff=1536, tied=False)


@pytest.fixture(scope="module")
def f32_256(tmp_path_factory):
    p = tmp_path_factory.mktemp("quant-im") / "f32-256.gguf"
    return float_llama(p, n_embd=256, n_head=8, n_head_kv=2, n_layer=8, n_ff=512, tied=True)


def peer_quantize_dict(python, src, qw, types, tmp_path):
    from guanaco_rt.quantizer import FILE_TYPES as IDS
    npz = str(tmp_path / "imatrix.npz")
    np.savez(npz, **qw)
    out = {f: str(tmp_path / f"peer-{f}.gguf") for f in types}
    cmd = [python, os.path.join(HERE, "peer_llama_quantize.py"), src, "2",
           *[f"{p}:{IDS[f][0]}" for f, p in out.items()], "--imatrix-npz", npz]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.mark.parametrize("which", ["f32_576", "f32_256"])
def test_files_with_imatrix_dict_match_llama_model_quantize(request, which, peer_python_or_skip, tmp_path):
    """llama_model_quantize with params.imatrix: all 14 types, byte for byte; one tensor without an
    entry (quantized without), the embeddings' entry of the wrong size (skipped, as llama.cpp does)"""
    import guanaco_rt
    src = request.getfixturevalue(which)
    qw = model_importance(src, seed=5)
    del qw["blk.3.ffn_up.weight"]
    types = FILE_TYPES if which == "f32_576" else [f for f in FILE_TYPES if "_K" in f]
    theirs = peer_quantize_dict(peer_python_or_skip, src, qw, types, tmp_path)
    for f in types:
        ours = str(tmp_path / f"ours-{f}.gguf")
        got = guanaco_rt.quantize(src, ours, f, threads=2, imatrix=qw)
        assert_same_file(ours, theirs[f])
        if f in ("Q4_0", "Q5_0"):        # the first n_layer/8 ffn_down layers get the _1 type
            assert got["blk.0.ffn_down.weight"] == f[:2] + "_1" and got["blk.1.ffn_down.weight"] == f
        os.remove(ours)


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_imatrix_files_match_llama_quantize(fmt, f32_256, llama_quantize, tmp_path):
    """llama-quantize --imatrix FILE (its own loader, its quantize.imatrix.* keys) against
    guanaco-rt quantize --imatrix FILE, on the k-quants' file and on Q4_0 / Q5_1"""
    qw = model_importance(f32_256, seed=6)
    del qw["token_embd.weight"]
    if fmt == "gguf":
        im = write_gguf_imatrix(tmp_path / "im.gguf", {k: v * 20 for k, v in qw.items()}, {k: [20] for k in qw})
    else:
        im = write_legacy(tmp_path / "im.dat", qw, ncall=9, chunk_count=9, dataset="some text.txt")
    im = os.path.basename(im)
    # the guanaco_rt under test (built in place, or installed), not the checkout's unbuilt sources
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(guanaco_rt.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([pkg_root, os.environ.get("PYTHONPATH", "")]),
           "GUANACO_RT_PROGRESS": "0"}
    for f in ("Q4_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_S", "Q6_K"):
        r = subprocess.run([llama_quantize, "--imatrix", im, f32_256, "peer.gguf", f, "2"], capture_output=True,
                           text=True, cwd=str(tmp_path))
        assert r.returncode == 0, r.stderr[-2000:]
        r = subprocess.run([sys.executable, "-m", "guanaco_rt", "quantize", f32_256, "ours.gguf", f, "-t", "2",
                            "--imatrix", im], capture_output=True, text=True, cwd=str(tmp_path), env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert_same_file(str(tmp_path / "ours.gguf"), str(tmp_path / "peer.gguf"))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_demo_model_with_llama_imatrix_matches_llama_quantize(fmt, llama_quantize, tmp_path_factory):
    """the issue's target with an importance matrix: the demo model's weights (F32, gguf-py), an
    imatrix from llama-imatrix over a page of text, all 14 file types; about 3 minutes on 2 cores"""
    import gguf
    from test_quantize import dequantize_gguf_to_f32

    from guanaco_rt.demo import demo_model_path
    tool = llama_bin("llama-imatrix")
    if tool is None:
        pytest.skip("no llama-imatrix")
    d = tmp_path_factory.mktemp("demo-im")
    src = str(d / "smol-f32.gguf")
    dequantize_gguf_to_f32(demo_model_path(), src, gguf)
    (d / "calib.txt").write_text(open(os.path.join(os.path.dirname(HERE), "README.md")).read()[:6000])
    im = f"imatrix.{fmt}"
    r = subprocess.run([tool, "-m", src, "-f", "calib.txt", "-o", im, "--output-format", fmt, "-c", "256", "-t", "2",
                        "--chunks", "4"], capture_output=True, text=True, cwd=str(d))
    assert r.returncode == 0, r.stderr[-2000:]
    import guanaco_rt
    for f in FILE_TYPES:
        r = subprocess.run([llama_quantize, "--imatrix", im, src, "peer.gguf", f, "2"], capture_output=True,
                           text=True, cwd=str(d))
        assert r.returncode == 0, r.stderr[-2000:]
        cwd = os.getcwd()
        os.chdir(d)                       # the imatrix's path as given goes into the metadata
        try:
            guanaco_rt.quantize(src, "ours.gguf", f, threads=2, imatrix=im)
        finally:
            os.chdir(cwd)
        assert_same_file(str(d / "ours.gguf"), str(d / "peer.gguf"))
