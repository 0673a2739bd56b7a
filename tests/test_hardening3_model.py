"""Hardening 3, the model file: a file truncated during a call (the SIGBUS guard), the
file check on the open file rather than the path, the tensor table (overlapping data,
layer numbers spelled otherwise than llama.cpp spells them), the fingerprint over every
weight byte, and a closed Model's typed errors."""
import os
import shutil
import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest
from test_gguf_model import write_llama_gguf

import guanaco_rt
from guanaco_rt import gguf_file
from guanaco_rt.errors import FormatError, ModelClosedError, ModelFileChangedError, StateError

from helpers import FileLayout, child, tiny_model


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("hard3")


@pytest.fixture(scope="module")
def path(root):
    return tiny_model(root, "q4_0", n_vocab=600)


def run_child(code, *args, faulthandler=False, timeout=120):
    """Run ``code`` in a fresh interpreter that imports this guanaco_rt (installed or built in place)."""
    cmd = [sys.executable] + (["-X", "faulthandler"] if faulthandler else []) + ["-c", textwrap.dedent(code)]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, **child())


# ---- 8. the file truncated during a call ----------------------------------------------------
TRUNCATE_IN_CALLBACK = """
import os, shutil, sys
import guanaco_rt
from guanaco_rt.errors import ModelFileChangedError
path, isa = sys.argv[1], sys.argv[2]
m = guanaco_rt.Model(path, n_threads=2, isa=isa)
s = guanaco_rt.Session(m, n_ctx=256)
print("file-backed bytes", os.path.getsize(path) - m.repacked_bytes)
n = 0
def cut(piece):
    global n
    n += 1
    if n == 3 and len(sys.argv) > 3:   # mid-generation: another file copied over this one
        shutil.copyfile(sys.argv[3], path)
    elif n == 3:                       # mid-generation: the next token reads pages that are gone
        os.truncate(path, 4096)
try:
    s.generate([1, 5, 6], max_new_tokens=40, temperature=0, callback=cut)
    print("NOT RAISED")
except ModelFileChangedError as e:
    print("CAUGHT during the call:", e)
print("pieces", n)
for call in (lambda: s.generate([1, 5], max_new_tokens=4, temperature=0),
             lambda: guanaco_rt.Session(m, n_ctx=64)):
    try:
        call()
        print("NOT REFUSED")
    except ModelFileChangedError:
        print("REFUSED after")
"""


@pytest.mark.parametrize("faulthandler", [False, True], ids=["plain", "faulthandler"])
@pytest.mark.parametrize("isa", ["generic", "best"])
def test_8_truncation_during_a_generation_is_an_error_not_sigbus(path, tmp_path, isa, faulthandler):
    # generic: nothing is interleaved at load, every weight is read from the file; best: the
    # interleaved types are in memory, the embeddings and norms still come from the file
    from guanaco_rt._kernels.dispatch import default_kernels
    p = tmp_path / "m.bin"
    shutil.copy(path, p)
    r = run_child(TRUNCATE_IN_CALLBACK, p, "generic" if isa == "generic" else default_kernels().isa,
                  faulthandler=faulthandler)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])       # -7: killed by SIGBUS
    assert "CAUGHT during the call" in r.stdout and "shrank" in r.stdout and "m.bin" in r.stdout, r.stdout
    assert r.stdout.count("REFUSED after") == 2 and "NOT" not in r.stdout, r.stdout
    # the call stops at the fault (the next layer), not after 40 tokens of zero weights
    pieces = int(r.stdout.split("pieces ")[1].split()[0])
    assert pieces <= 5, r.stdout


GUARD_UNIT = """
import mmap, os, sys
import numpy as np
from guanaco_rt._kernels._mapguard import GuardedBuffer
path, which = sys.argv[1], sys.argv[2]
with open(path, "wb") as f:
    f.write(bytes(range(256)) * 64)                  # 16 KiB
f = open(path, "rb")
mine = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
g = GuardedBuffer(mine)
a = np.frombuffer(g, np.uint8)
other = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)   # not registered
print("before", g.guarded, g.faulted, int(a[:4096].sum()), flush=True)
os.truncate(path, 4096)
if which == "guarded":
    head, tail = int(a[:4096].sum()), int(a[4096:].sum())
    print("after", g.faulted, head, tail, flush=True)
else:
    print("foreign", int(other[8192]), flush=True)   # dies with SIGBUS, as without the guard
"""


@pytest.mark.parametrize("faulthandler", [False, True], ids=["plain", "faulthandler"])
def test_8_the_guard_zeroes_only_its_own_mapping(tmp_path, faulthandler):
    p = tmp_path / "f.bin"
    r = run_child(GUARD_UNIT, p, "guarded", faulthandler=faulthandler)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    # the pages still in the file keep their bytes, the ones past the new end read as zeros
    assert r.stdout.split("\n")[:2] == ["before True False 522240", "after True 522240 0"], r.stdout
    r = run_child(GUARD_UNIT, p, "foreign", faulthandler=faulthandler)
    assert r.returncode == -7 and "foreign" not in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])
    assert ("Bus error" in r.stderr) == faulthandler, r.stderr      # the previous handler still runs


def test_8_a_file_copied_over_during_a_generation_fails_that_call(root, path, tmp_path):
    p = tmp_path / "m.bin"
    shutil.copy(path, p)
    other = tiny_model(root, "q4_0", n_vocab=600, seed=7)       # same shape and size, other weights
    r = run_child(TRUNCATE_IN_CALLBACK, p, "generic", other)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "CAUGHT during the call" in r.stdout and "changed" in r.stdout, r.stdout
    assert r.stdout.count("REFUSED after") == 2 and "NOT" not in r.stdout, r.stdout


def test_8_truncation_from_another_thread_during_a_prompt(path, tmp_path):
    # the OpenMP workers hit the missing pages too; whichever call sees it raises, none dies
    p = tmp_path / "m.bin"
    shutil.copy(path, p)
    code = """
    import os, sys, threading, time
    import guanaco_rt
    from guanaco_rt.errors import ModelFileChangedError
    path = sys.argv[1]
    m = guanaco_rt.Model(path, n_threads=2, isa="generic")
    s = guanaco_rt.Session(m, n_ctx=2048, n_batch=8)
    t = threading.Timer(0.05, os.truncate, (path, 0))
    t.start()
    outcome = []
    for _ in range(20):
        try:
            s.reset()
            s.eval(list(range(1, 500)))
            outcome.append("ok")
        except ModelFileChangedError:
            outcome.append("raised")
    t.join()
    print(" ".join(outcome))
    """
    r = run_child(code, p)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])       # -7: killed by SIGBUS
    words = r.stdout.split()
    assert len(words) == 20 and words[-1] == "raised" and "ok" not in words[words.index("raised"):], r.stdout


def test_8_a_file_rewritten_in_place_is_detected(path, tmp_path):
    p = tmp_path / "m.bin"
    shutil.copy(path, p)
    m = guanaco_rt.Model(p)
    s = guanaco_rt.Session(m, n_ctx=64)
    s.eval([1, 5])
    with open(p, "r+b") as f:                 # same inode, same size, other bytes
        f.seek(os.path.getsize(p) - 64)
        f.write(bytes(64))
    os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 1_000_000))
    with pytest.raises(ModelFileChangedError, match="m.bin"):
        s.eval([6])


def test_8_chdir_with_a_relative_path_keeps_working(path, tmp_path, monkeypatch):
    d = tmp_path / "models"
    d.mkdir()
    shutil.copy(path, d / "m.bin")
    monkeypatch.chdir(d)
    m = guanaco_rt.Model("m.bin")
    s = guanaco_rt.Session(m, n_ctx=64)
    ref = s.eval([1, 5]).copy()
    monkeypatch.chdir(tmp_path)               # "m.bin" now names nothing
    s.reset()
    np.testing.assert_array_equal(s.eval([1, 5]), ref)
    guanaco_rt.Session(m, n_ctx=64).eval([1])


def test_8_unlinking_the_file_keeps_the_model_working(path, tmp_path):
    p = tmp_path / "m.bin"
    shutil.copy(path, p)
    m = guanaco_rt.Model(p)
    s = guanaco_rt.Session(m, n_ctx=64)
    ref = s.eval([1, 5]).copy()
    os.unlink(p)                              # the mapping keeps the inode
    s.reset()
    np.testing.assert_array_equal(s.eval([1, 5]), ref)
    guanaco_rt.Session(m, n_ctx=64).eval([1])


def test_8_an_atomic_replace_keeps_the_model_working(path, tmp_path):
    p = tmp_path / "m.bin"
    shutil.copy(path, p)
    m = guanaco_rt.Model(p)
    s = guanaco_rt.Session(m, n_ctx=64)
    ref = s.eval([1, 5]).copy()
    new = tmp_path / "new.bin"
    shutil.copy(path, new)
    os.replace(new, p)                        # an unchanged copy, atomically: the mapped inode is intact
    s.reset()
    np.testing.assert_array_equal(s.eval([1, 5]), ref)
    guanaco_rt.Session(m, n_ctx=64).eval([1])


# ---- 9. the tensor table --------------------------------------------------------------------
def _tensor_offset_field(data, name):
    """Offset in a GGUF file of the uint64 data offset in ``name``'s tensor info."""
    raw = name.encode()
    at = data.index(len(raw).to_bytes(8, "little") + raw) + 8 + len(raw)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    return at + 4 + 8 * n_dims + 4


def test_9_overlapping_tensor_data_is_refused(tmp_path):
    p = write_llama_gguf(tmp_path / "m.gguf", wtype=2)            # q4_0: interleaved in place with mmap=False
    data = bytearray(open(p, "rb").read())
    q0 = _tensor_offset_field(data, "blk.0.attn_q.weight")
    q1 = _tensor_offset_field(data, "blk.1.attn_q.weight")
    data[q1:q1 + 8] = data[q0:q0 + 8]                            # layer 1's wq is layer 0's bytes
    bad = tmp_path / "overlap.gguf"
    bad.write_bytes(bytes(data))
    for mmap in (False, True):
        with pytest.raises(FormatError, match="overlap") as e:
            guanaco_rt.Model(bad, mmap=mmap)
        msg = str(e.value)
        assert "overlap.gguf" in msg and "blk.0.attn_q.weight" in msg and "blk.1.attn_q.weight" in msg, msg
    with pytest.raises(FormatError, match=r"\[\d+, \d+\) overlap"):
        gguf_file.parse(bad, bytes(data))


def _renamed_gguf(tmp_path, monkeypatch, rename):
    """write_llama_gguf's model with tensor names changed by ``rename`` (name -> list of names)."""
    add = gguf.GGUFWriter.add_tensor

    def add_renamed(self, name, *a, **kw):
        for n in rename(name):
            add(self, n, *a, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(gguf.GGUFWriter, "add_tensor", add_renamed)
        return write_llama_gguf(tmp_path / "renamed.gguf")


@pytest.mark.parametrize("spelling, how", [
    ("00", "beside"),          # blk.0. and blk.00.: read as one layer, the last one silently won
    ("\u00b9", "instead"),     # blk.¹.: str.isdigit() but int() raises ValueError
    ("\u0661", "instead"),     # blk.١. (Arabic-Indic one): int() reads 1, llama.cpp never looks it up
    ("+1", "instead"),
    ("2", "beside"),           # past llama.block_count (2 layers): llama.cpp refuses the unused tensor
    ("9" * 5000, "beside"),    # int() of more than 4300 digits raises ValueError
], ids=["00", "superscript-1", "arabic-indic-1", "plus-1", "past-block-count", "5000-digits"])
def test_9_layer_numbers_are_read_as_llama_cpp_writes_them(tmp_path, monkeypatch, spelling, how):
    layer = "0" if spelling == "00" else "1"
    target = f"blk.{layer}.attn_q.weight"

    def rename(name):
        if name != target:
            return [name]
        other = name.replace(f"blk.{layer}.", f"blk.{spelling}.")
        return [name, other] if how == "beside" else [other]

    p = _renamed_gguf(tmp_path, monkeypatch, rename)
    with pytest.raises(FormatError, match="renamed.gguf") as e:
        guanaco_rt.Model(p)
    assert f"blk.{spelling}.attn_q.weight"[:80] in str(e.value)


# ---- 10. the fingerprint covers every byte ----------------------------------------------------
def test_10_fingerprint_covers_bytes_past_4_kib(path, tmp_path):
    data = bytearray(open(path, "rb").read())
    t = FileLayout(data).tensor("layers.1.feed_forward.w2.weight")
    assert t["nbytes"] > 3 * 4096
    at = t["data"] + t["nbytes"] - 7           # a quant byte of the last block, far past the first 4 KiB
    data[at] ^= 0x5A
    other = tmp_path / "other.bin"
    other.write_bytes(bytes(data))
    a, b = guanaco_rt.Model(path), guanaco_rt.Model(other)
    assert a.fingerprint != b.fingerprint
    sa = guanaco_rt.Session(a, n_ctx=64)
    sa.eval([1, 5, 6])
    blob = sa.save_state()
    with pytest.raises(StateError, match="different model"):
        guanaco_rt.Session(b, n_ctx=64).load_state(blob)
    guanaco_rt.Session(guanaco_rt.Model(path, mmap=False), n_ctx=64).load_state(blob)   # the same file loads


def test_10_fingerprint_is_the_same_for_every_way_of_loading(path):
    from guanaco_rt._kernels.dispatch import available_isas
    fps = {guanaco_rt.Model(path, mmap=mmap, isa=isa).fingerprint for mmap in (True, False)
           for isa in available_isas()}
    assert len(fps) == 1


# ---- 11. a closed Model ------------------------------------------------------------------------
def test_11_a_closed_model_raises_model_closed_error(path):
    m = guanaco_rt.Model(path)
    m.close()
    with pytest.raises(ModelClosedError, match="closed"):
        m.fingerprint
    with pytest.raises(ModelClosedError, match="closed"):
        m.tensor_data("norm.weight")
    with pytest.raises(ModelClosedError):
        guanaco_rt.Session(m)
