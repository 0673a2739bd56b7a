"""guanaco_rt.quantize against llama.cpp's llama_model_quantize on one F16 file, side by side.

The file: LLaMA-7B's widths (n_embd 4096, n_ff 11008, 32000 tokens, 32 heads) cut to --layers
layers, random F16 weights (written once to --file). Each round runs both, alternating which goes
first, each in a fresh process at --threads threads; the figure is the wall time of the quantize
call alone (llama.cpp's as timed in tests/peer_llama_quantize.py; ours around guanaco_rt.quantize).
Prints one table row per type: median seconds of each and the ratio (llama.cpp / ours: > 1 means
ours is faster), and whether the two outputs were byte-identical.

    python benchmarks/bench_quantize.py [--types Q4_0,Q4_K_M,Q6_K] [--rounds 3] [--threads 2]
    python benchmarks/bench_quantize.py --rows     # the row quantizers alone, 1 thread, in one process

--rows: our row quantizer and the peer's ggml_quantize_chunk (its libggml-base.so loaded here with
ctypes) on the same 256 x 4096 rows, alternating, best of 9 each.

The llama.cpp peer: GUANACO_RT_PEER_PYTHON, else /work/peer-llama/bin/python.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write_f16_file(path, n_layer, seed=0):
    import gguf
    sys.path.insert(0, ROOT)
    from guanaco_rt.writer import add_spm_vocab
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import add_llama_hparams, spm_vocab
    n_embd, n_ff, n_head, n_vocab = 4096, 11008, 32, 32000
    w = gguf.GGUFWriter(path, "llama")
    add_llama_hparams(w, n_layer, n_embd, n_ff, n_head, eps=1e-6, n_ctx=4096, file_type=1)
    pieces = spm_vocab(300)
    pieces += [(f"<x{i}>", -1000.0 - i, 1) for i in range(n_vocab - len(pieces))]
    add_spm_vocab(w, pieces)
    rng = np.random.default_rng(seed)

    def add(name, shape):
        x = rng.standard_normal(tuple(reversed(shape)), dtype=np.float32) * 0.02
        w.add_tensor(name, x if len(shape) == 1 else x.astype(np.float16))
    add("token_embd.weight", (n_embd, n_vocab))
    for i in range(n_layer):
        add(f"blk.{i}.attn_norm.weight", (n_embd,))
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            add(f"blk.{i}.{t}.weight", (n_embd, n_embd))
        add(f"blk.{i}.ffn_norm.weight", (n_embd,))
        add(f"blk.{i}.ffn_gate.weight", (n_embd, n_ff))
        add(f"blk.{i}.ffn_up.weight", (n_embd, n_ff))
        add(f"blk.{i}.ffn_down.weight", (n_ff, n_embd))
    add("output_norm.weight", (n_embd,))
    add("output.weight", (n_embd, n_vocab))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


OURS = """
import sys, time
import numpy as np
import guanaco_rt
im = None
if len(sys.argv) > 5:
    with np.load(sys.argv[5]) as f:
        im = {k: f[k] for k in f.files}
t0 = time.perf_counter()
guanaco_rt.quantize(sys.argv[1], sys.argv[2], sys.argv[3], threads=int(sys.argv[4]), imatrix=im)
print(time.perf_counter() - t0)
"""


def run_ours(src, dst, ftype, threads, npz=None):
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-c", OURS, src, dst, ftype, str(threads), *([npz] if npz else [])],
                       capture_output=True, text=True, env=env, check=True)
    return float(r.stdout.split()[-1])


def run_peer(python, src, dst, ftype, threads, npz=None):
    from guanaco_rt.quantizer import FILE_TYPES
    r = subprocess.run([python, os.path.join(ROOT, "tests", "peer_llama_quantize.py"), src, str(threads),
                        f"{dst}:{FILE_TYPES[ftype][0]}", *(["--imatrix-npz", npz] if npz else [])],
                       capture_output=True, text=True, check=True)
    return float(r.stdout.split()[-1])


def write_importance(src, npz):
    """a random importance (mean squares over orders of magnitude) for every 2-D weight but the
    token embeddings, as llama-imatrix's would be"""
    import mmap

    from guanaco_rt import gguf_file
    with open(src, "rb") as f:
        g = gguf_file.parse(src, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    rng = np.random.default_rng(0)
    im = {t.name: (rng.random(t.shape[0]) ** 3 * 10.0 ** rng.uniform(-3, 3, t.shape[0])).astype(np.float32)
          for t in g.tensors.values() if len(t.shape) == 2 and t.name != "token_embd.weight"}
    np.savez(npz, **im)


def bench_rows(python, with_imatrix=False):
    import ctypes
    import glob
    sys.path.insert(0, ROOT)
    from guanaco_rt._kernels import _quantize as Q
    site = subprocess.run([python, "-c", "import llama_cpp, os; print(os.path.dirname(llama_cpp.__file__))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    lib = ctypes.CDLL(sorted(glob.glob(os.path.join(site, "lib", "libggml-base.so*")))[-1])
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    x = (np.random.default_rng(0).standard_normal((256, 4096)) * 0.02).astype(np.float32)
    out = np.empty(x.size * 2, np.uint8)
    rng = np.random.default_rng(1)
    qw = (rng.random(4096) ** 3 * 10.0 ** rng.uniform(-3, 3, 4096)).astype(np.float32) if with_imatrix else None
    qw_ptr = qw.ctypes.data if with_imatrix else None
    print("| type | ggml ms | ours ms | ggml / ours |" + (" (with an importance matrix)" if with_imatrix else ""))
    print("|---|---|---|---|")
    for name, t in (("Q4_0", 2), ("Q4_1", 3), ("Q5_0", 6), ("Q5_1", 7), ("Q8_0", 8), ("Q2_K", 10), ("Q3_K", 11),
                    ("Q4_K", 12), ("Q5_K", 13), ("Q6_K", 14), ("IQ4_NL", 20)):
        bp = bo = 1e9
        for _ in range(9):
            t0 = time.perf_counter()
            lib.ggml_quantize_chunk(t, x.ctypes.data, out.ctypes.data, 0, 256, 4096, qw_ptr)
            bp = min(bp, time.perf_counter() - t0)
            t0 = time.perf_counter()
            Q.quantize_rows(t, x, 1, imatrix=qw)
            bo = min(bo, time.perf_counter() - t0)
        print(f"| {name} | {bp * 1e3:.1f} | {bo * 1e3:.1f} | {bp / bo:.2f}x |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", default="/tmp/bench-7Bwidth-f16.gguf")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--types", default="Q4_0,Q8_0,Q4_K_M,Q6_K")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", action="store_true", help="the row quantizers alone, in one process")
    ap.add_argument("--imatrix", action="store_true",
                    help="with a (random) importance matrix: llama_model_quantize's params.imatrix, our imatrix=")
    a = ap.parse_args()
    sys.path.insert(0, ROOT)
    python = os.environ.get("GUANACO_RT_PEER_PYTHON") or "/work/peer-llama/bin/python"
    if a.rows:
        return bench_rows(python, a.imatrix)
    if not os.path.exists(a.file):
        write_f16_file(a.file, a.layers)
    npz = None
    if a.imatrix:
        npz = a.file + ".imatrix.npz"
        write_importance(a.file, npz)
    flags = [f for f in open("/proc/cpuinfo").read().split("flags\t\t:")[1].split("\n")[0].split()
             if f.startswith(("avx", "fma", "f16c", "amx"))]
    print(f"file {a.file} ({os.path.getsize(a.file) / 2**30:.2f} GiB F16), {a.threads} threads, "
          f"{a.rounds} rounds alternating{', with an importance matrix' if npz else ''}; CPU flags: {' '.join(flags)}")
    print("| type | llama.cpp s | ours s | llama.cpp / ours | identical |")
    print("|---|---|---|---|---|")
    for ftype in a.types.split(","):
        ours_t, peer_t = [], []
        d_ours, d_peer = a.file + f".ours.{ftype}", a.file + f".peer.{ftype}"
        for r in range(a.rounds):
            order = [("ours", d_ours), ("peer", d_peer)]
            for who, dst in (order if r % 2 == 0 else order[::-1]):
                if who == "ours":
                    ours_t.append(run_ours(a.file, dst, ftype, a.threads, npz))
                else:
                    peer_t.append(run_peer(python, a.file, dst, ftype, a.threads, npz))
        same = open(d_ours, "rb").read() == open(d_peer, "rb").read()
        os.remove(d_ours)
        os.remove(d_peer)
        po, pp = statistics.median(ours_t), statistics.median(peer_t)
        print(f"| {ftype} | {pp:.2f} | {po:.2f} | {pp / po:.2f}x | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"({time.time() - t0:.0f} s)")
