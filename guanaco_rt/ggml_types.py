"""The ggml block types and llama ftypes: the 2023 ggjt v3 files' and the GGUF types read today.

Owns: type ids, block sizes, the layout of every block as a NumPy dtype (the one
Python description the writer and the tests derive from; the kernels' C structs in
_kernels/ggml_blocks.h are tested equal to it, field by field), which activation format each weight
type's dot product pairs with (ggml's ``vec_dot_type``), the llama ftype table and
the per-tensor type mixing llama.cpp's June-2023 quantizer applied for the k-quant
"_S/_M/_L" files. Does no math and touches no file.
"""
from dataclasses import dataclass

import numpy as np

QK_K = 256  # super-block size of the k-quants


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    blck_size: int      # weights per block
    vec_dot_type: int   # activation format the dot product pairs with
    weight: bool        # may appear in a model file
    fields: tuple       # the block, in order: (name, NumPy type, count); layouts at ggml_blocks.h

    @property
    def dtype(self):
        """One block as a packed NumPy structured dtype (F32/F16: one element)."""
        return np.dtype([(n, t, (c,)) if c > 1 else (n, t) for n, t, c in self.fields])

    @property
    def type_size(self):
        """Bytes per block."""
        return self.dtype.itemsize

    def offset(self, field):
        return self.dtype.fields[field][1]

    @property
    def scale_fields(self):
        """Names of the f16 scale fields (d, and m or dmin where there is one)."""
        return [n for n, t, c in self.fields if t == "<f2" and c == 1 and self.blck_size > 1]

    def row_bytes(self, ne0):
        return ne0 // self.blck_size * self.type_size


F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 = 0, 1, 2, 3, 6, 7, 8, 9
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K = 10, 11, 12, 13, 14, 15
IQ4_NL, IQ4_XS, BF16 = 20, 23, 30
IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ3_S, IQ2_S, IQ1_M, TQ1_0, TQ2_0 = 16, 17, 18, 19, 21, 22, 29, 34, 35

H, U8, I8, I16, U16, F = "<f2", "u1", "i1", "<i2", "<u2", "<f4"
GGML_TYPES = {t.id: t for t in [
    GGMLType(F32, "F32", 1, F32, True, (("x", F, 1),)),
    GGMLType(F16, "F16", 1, F32, True, (("x", H, 1),)),
    # ggml pairs q4_0, q5_0 and q8_0 with q8_0 (f16 scale); we pair every 32-block type
    # with q8_1 (f32 scale): the same integer sums, one rounding less, a cheaper scale
    GGMLType(Q4_0, "Q4_0", 32, Q8_1, True, (("d", H, 1), ("qs", U8, 16))),
    GGMLType(Q4_1, "Q4_1", 32, Q8_1, True, (("d", H, 1), ("m", H, 1), ("qs", U8, 16))),
    GGMLType(Q5_0, "Q5_0", 32, Q8_1, True, (("d", H, 1), ("qh", U8, 4), ("qs", U8, 16))),
    GGMLType(Q5_1, "Q5_1", 32, Q8_1, True, (("d", H, 1), ("m", H, 1), ("qh", U8, 4), ("qs", U8, 16))),
    GGMLType(Q8_0, "Q8_0", 32, Q8_1, True, (("d", H, 1), ("qs", I8, 32))),
    GGMLType(Q8_1, "Q8_1", 32, Q8_1, False, (("d", F, 1), ("s", F, 1), ("qs", I8, 32))),
    GGMLType(Q2_K, "Q2_K", QK_K, Q8_K, True, (("scales", U8, 16), ("qs", U8, 64), ("d", H, 1), ("dmin", H, 1))),
    GGMLType(Q3_K, "Q3_K", QK_K, Q8_K, True, (("hmask", U8, 32), ("qs", U8, 64), ("scales", U8, 12), ("d", H, 1))),
    GGMLType(Q4_K, "Q4_K", QK_K, Q8_K, True, (("d", H, 1), ("dmin", H, 1), ("scales", U8, 12), ("qs", U8, 128))),
    GGMLType(Q5_K, "Q5_K", QK_K, Q8_K, True, (("d", H, 1), ("dmin", H, 1), ("scales", U8, 12), ("qh", U8, 32),
                                              ("qs", U8, 128))),
    GGMLType(Q6_K, "Q6_K", QK_K, Q8_K, True, (("ql", U8, 128), ("qh", U8, 64), ("scales", I8, 16), ("d", H, 1))),
    GGMLType(Q8_K, "Q8_K", QK_K, Q8_K, False, (("d", F, 1), ("qs", I8, 256), ("bsums", I16, 16))),
    # the non-linear 4-bit types (values from kvalues_iq4nl) and bfloat16 (bits only: NumPy has no bf16)
    GGMLType(IQ4_NL, "IQ4_NL", 32, Q8_1, True, (("d", H, 1), ("qs", U8, 16))),
    GGMLType(IQ4_XS, "IQ4_XS", QK_K, Q8_K, True, (("d", H, 1), ("scales_h", U16, 1), ("scales_l", U8, 4),
                                                  ("qs", U8, 128))),
    GGMLType(BF16, "BF16", 1, F32, True, (("x", U16, 1),)),
    # ---- i-quants and ternary types (issue 23), all paired with q8_K as in ggml. IQ1_M has no
    # f16 field: its scale is spread over the top nibbles of scales (ggml_blocks.h, iq1m_scale)
    GGMLType(IQ2_XXS, "IQ2_XXS", QK_K, Q8_K, True, (("d", H, 1), ("qs", U16, 32))),
    GGMLType(IQ2_XS, "IQ2_XS", QK_K, Q8_K, True, (("d", H, 1), ("qs", U16, 32), ("scales", U8, 8))),
    GGMLType(IQ2_S, "IQ2_S", QK_K, Q8_K, True, (("d", H, 1), ("qs", U8, 64), ("qh", U8, 8), ("scales", U8, 8))),
    GGMLType(IQ3_XXS, "IQ3_XXS", QK_K, Q8_K, True, (("d", H, 1), ("qs", U8, 96))),
    GGMLType(IQ3_S, "IQ3_S", QK_K, Q8_K, True, (("d", H, 1), ("qs", U8, 64), ("qh", U8, 8), ("signs", U8, 32),
                                                ("scales", U8, 4))),
    GGMLType(IQ1_S, "IQ1_S", QK_K, Q8_K, True, (("d", H, 1), ("qs", U8, 32), ("qh", U16, 8))),
    GGMLType(IQ1_M, "IQ1_M", QK_K, Q8_K, True, (("qs", U8, 32), ("qh", U8, 16), ("scales", U8, 8))),
    GGMLType(TQ1_0, "TQ1_0", QK_K, Q8_K, True, (("qs", U8, 48), ("qh", U8, 4), ("d", H, 1))),
    GGMLType(TQ2_0, "TQ2_0", QK_K, Q8_K, True, (("qs", U8, 64), ("d", H, 1))),
]}
TYPE_BY_NAME = {t.name: t for t in GGML_TYPES.values()}

# Every value of ggml's enum ggml_type to date (ggml.h), so that an error can name a type
# we do not read; "(removed)": ids ggml once used and retired.
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_2 (removed)", 5: "Q4_3 (removed)", 6: "Q5_0", 7: "Q5_1",
    8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
    24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
    31: "Q4_0_4_4 (removed)", 32: "Q4_0_4_8 (removed)", 33: "Q4_0_8_8 (removed)", 34: "TQ1_0", 35: "TQ2_0",
    36: "IQ4_NL_4_4 (removed)", 37: "IQ4_NL_4_8 (removed)", 38: "IQ4_NL_8_8 (removed)", 39: "MXFP4", 40: "NVFP4",
    41: "Q1_0",
}


def with_iq1m_scale(scales, d):
    """IQ1_M's 8 scale bytes of each block (uint8 (nb, 8)) with the f16 block scale d (nb,) put in
    the top nibbles of its four little-endian uint16 words (word w: bits 4w..4w+3 of d), the
    3-bit sub-block scales kept: -> uint8 (nb, 8)."""
    w = np.ascontiguousarray(scales, np.uint8).view("<u2").reshape(-1, 4).astype(np.uint16)
    bits = np.asarray(d, np.float16).view(np.uint16).reshape(-1, 1)
    top = ((bits >> (4 * np.arange(4, dtype=np.uint16))) & 0xF) << 12
    return ((w & 0x0FFF) | top).astype("<u2").view(np.uint8).reshape(-1, 8)


def type_name(ttype):
    """ggml's name of a type id ("BF16"), or "not a ggml type"."""
    return GGML_TYPE_NAMES.get(ttype, "not a ggml type")


def type_label(ttype):
    """A ggml type id as an error message names it: "BF16 (ggml type 30)", or
    "ggml type 99 (not a ggml type)"."""
    name = GGML_TYPE_NAMES.get(ttype)
    return f"ggml type {ttype} (not a ggml type)" if name is None else f"{name} (ggml type {ttype})"
WEIGHT_TYPES = sorted(t.id for t in GGML_TYPES.values() if t.weight)
# the ones a ggjt v3 file can hold: ggml's types of mid-2023 (F32 .. Q6_K); BF16 and the i-quants came with GGUF
GGJT_WEIGHT_TYPES = [t for t in WEIGHT_TYPES if t <= Q6_K]


@dataclass(frozen=True)
class FType:
    id: int
    name: str        # the suffix of guanaco-7B.ggmlv3.<name>.bin
    base_type: int   # the type of most 2-D tensors


# llama_ftype as stored in the hparams of a ggjt v3 file
FTYPES = {f.id: f for f in [
    FType(0, "f32", F32),
    FType(1, "f16", F16),
    FType(2, "q4_0", Q4_0),
    FType(3, "q4_1", Q4_1),
    FType(7, "q8_0", Q8_0),
    FType(8, "q5_0", Q5_0),
    FType(9, "q5_1", Q5_1),
    FType(10, "q2_K", Q2_K),
    FType(11, "q3_K_S", Q3_K),
    FType(12, "q3_K_M", Q3_K),
    FType(13, "q3_K_L", Q3_K),
    FType(14, "q4_K_S", Q4_K),
    FType(15, "q4_K_M", Q4_K),
    FType(16, "q5_K_S", Q5_K),
    FType(17, "q5_K_M", Q5_K),
    FType(18, "q6_K", Q6_K),
]}
FTYPE_BY_NAME = {f.name: f for f in FTYPES.values()}
# 4 was "mostly Q4_1, some F16"; 5 and 6 were the withdrawn Q4_2 / Q4_3.
LEGACY_FTYPES = {4: "mostly Q4_1 with some F16", 5: "Q4_2 (withdrawn)", 6: "Q4_3 (withdrawn)"}
# llama_ftype values GGUF files of today's llama.cpp may carry in general.file_type, beyond the
# table above (the name only: a GGUF file's tensors carry their own types; ggjt files never had these)
GGUF_FTYPE_NAMES = {19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
                    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
                    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE"}
# The 14 Guanaco files
GUANACO_FTYPES = ["q2_K", "q3_K_L", "q3_K_M", "q3_K_S", "q4_0", "q4_1", "q4_K_M", "q4_K_S",
                  "q5_0", "q5_1", "q5_K_M", "q5_K_S", "q6_K", "q8_0"]


def _use_more_bits(i, n):
    # llama.cpp gives the first and last eighth of the layers, and every third
    # one between, more bits in the *_M files.
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type_for(ftype_name, name, shape, layer, n_layer):
    """The type llama.cpp's k-quant quantizer chose for one tensor of a given ftype.

    ``shape`` is in ggml order (ne0 first). 1-D tensors stay F32.
    """
    f = FTYPE_BY_NAME[ftype_name]
    if len(shape) == 1:
        return F32
    t = f.base_type
    if t not in (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K):
        return t
    if name == "output.weight":
        return Q6_K if all(d % QK_K == 0 for d in shape) else t
    if name.endswith("attention.wv.weight") or name.endswith("feed_forward.w2.weight"):
        if ftype_name in ("q3_K_M", "q2_K"):
            return Q4_K
        if ftype_name == "q3_K_L":
            return Q5_K
        if ftype_name in ("q4_K_M", "q5_K_M") and _use_more_bits(layer, n_layer):
            return Q6_K
        return t
    if name.endswith("attention.wo.weight"):
        if ftype_name in ("q3_K_M", "q2_K"):
            return Q4_K
        if ftype_name == "q3_K_L":
            return Q5_K
    return t


# ---- row-interleaved copies (ggml_blocks.h: block_q4_0x8 ... block_q6_Kx8) -------------
# The engine interleaves each 8 rows of an R8_TYPES weight (every quantized type) at load, for
# kernels that put 8 rows in the 8 lanes of one register (the last ne1 % 8 rows stay as they are, after the
# groups); these two functions are the layout's spec.
R8_TYPES = (2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 20, 23)   # Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K ... Q6_K, IQ4_NL, IQ4_XS


def _r8_parts(ttype):
    """[(bytes in a block, bytes per row and step)]: each field in the file's order, interleaved
    8 rows at a time in steps of the given size (f16 scales and q2_K/q6_K's scale pairs 2 bytes;
    the rest 4). _engine.r8_parts is the same table."""
    if ttype == 10:
        return [(16, 2), (64, 4), (2, 2), (2, 2)]                                     # scales, qs, d, dmin
    if ttype == 14:
        return [(128, 4), (64, 4), (16, 2), (2, 2)]                                  # ql, qh, scales, d
    if ttype == 11:
        return [(32, 4), (64, 4), (12, 4), (2, 2)]                                    # hmask, qs, scales, d
    if ttype in (12, 13):
        return [(2, 2), (2, 2), (12, 4)] + [(32, 4)] * (ttype == 13) + [(128, 4)]   # d, dmin, scales, (qh,) qs
    if ttype == 8:
        return [(2, 2), (32, 4)]                                                    # d, qs
    if ttype == 23:                                                                 # (IQ4_NL: as Q4_0, below)
        return [(2, 2), (2, 2), (4, 4), (128, 4)]                                     # d, scales_h, scales_l, qs
    return [(2, 2)] * (2 if ttype in (3, 7) else 1) + [(4, 4)] * (ttype in (6, 7)) + [(16, 4)]  # d (, m) (, qh), qs


def interleave_r8(raw, ttype, ne0, ne1):
    """Bytes of a (ne1 >= 8 rows of ne0) tensor of an R8_TYPES type -> the same bytes, each whole 8 rows
    interleaved, the last ne1 % 8 rows as they are after the groups (the groups take the bytes of their rows)."""
    parts = _r8_parts(ttype)
    bs, nb, g = sum(n for n, _ in parts), ne0 // GGML_TYPES[ttype].blck_size, ne1 // 8
    raw = np.frombuffer(raw, np.uint8)
    b = raw[:g * 8 * nb * bs].reshape(g, 8, nb, bs)                        # group, row, block, byte
    out, at = [], 0
    for n, step in parts:
        f = b[..., at:at + n].reshape(g, 8, nb, n // step, step).transpose(0, 2, 3, 1, 4)  # g, i, k, r, j
        out.append(f.reshape(g, nb, -1))
        at += n
    return np.concatenate(out, axis=2).tobytes() + raw[g * 8 * nb * bs:].tobytes()


def deinterleave_r8(raw, ttype, ne0, ne1):
    """The inverse of interleave_r8: the tensor's bytes as the file has them."""
    parts = _r8_parts(ttype)
    bs, nb, g = sum(n for n, _ in parts), ne0 // GGML_TYPES[ttype].blck_size, ne1 // 8
    raw = np.frombuffer(raw, np.uint8)
    b = raw[:g * 8 * nb * bs].reshape(g, nb, 8 * bs)
    out, at = [], 0
    for n, step in parts:
        f = b[..., at:at + 8 * n].reshape(g, nb, n // step, 8, step).transpose(0, 3, 1, 2, 4)  # g, r, i, k, j
        out.append(f.reshape(g, 8, nb, n))
        at += 8 * n
    return np.concatenate(out, axis=3).tobytes() + raw[g * 8 * nb * bs:].tobytes()
