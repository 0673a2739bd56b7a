"""Hypothesis strategies: valid blocks of every weight type (finite f16 scales), vectors."""
import numpy as np
from hypothesis import strategies as st

from guanaco_rt import ggml_types as T

# byte offsets of the f16 scale fields of each quantized weight type, from the layout table
F16_FIELDS = {t.id: [t.offset(f) for f in t.scale_fields] for t in T.GGML_TYPES.values()
              if t.weight and t.blck_size > 1}
IQ1M_SCALES = T.GGML_TYPES[T.IQ1_M].offset("scales")   # IQ1_M's f16 scale: the top nibbles of 4 words
QUANT_WEIGHT_TYPES = sorted(F16_FIELDS)
ALL_WEIGHT_TYPES = [T.F32, T.F16, T.BF16] + QUANT_WEIGHT_TYPES


def finite_f16(lo=-65504.0, hi=65504.0):
    return st.floats(lo, hi, width=16, allow_nan=False, allow_infinity=False)


@st.composite
def blocks(draw, ttype, n_blocks=None, scale_lo=1e-3, scale_hi=1.0, any_finite_scale=False):
    """(bytes, n_elements) for n_blocks random valid blocks of ``ttype``."""
    t = T.GGML_TYPES[ttype]
    nb = draw(st.integers(1, 8)) if n_blocks is None else n_blocks
    n = nb * t.blck_size
    if ttype == T.F32:
        vals = draw(st.lists(st.floats(-100, 100, width=32), min_size=n, max_size=n))
        return np.array(vals, np.float32).tobytes(), n
    if ttype == T.F16:
        vals = draw(st.lists(finite_f16(-100, 100), min_size=n, max_size=n))
        return np.array(vals, np.float16).tobytes(), n
    if ttype == T.BF16:            # finite floats cut to their top 16 bits; rows long enough for the vector loops
        n = draw(st.integers(1, 300)) if n_blocks is None else n
        vals = np.array(draw(st.lists(st.floats(-100, 100, width=32), min_size=n, max_size=n)), np.float32)
        return (vals.view(np.uint32) >> 16).astype(np.uint16).tobytes(), n
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(nb, t.type_size), dtype=np.uint8)
    for off in F16_FIELDS[ttype]:
        if any_finite_scale:
            vals = np.array(draw(st.lists(finite_f16(), min_size=nb, max_size=nb)), np.float16)
        else:
            mag = np.array(draw(st.lists(st.floats(scale_lo, scale_hi), min_size=nb, max_size=nb)))
            sign = rng.choice([-1.0, 1.0], size=nb)
            vals = (mag * sign).astype(np.float16)
        raw[:, off:off + 2] = vals.view(np.uint8).reshape(nb, 2)
    if ttype == T.IQ1_M:
        d = draw(_scales(nb, rng, scale_lo, scale_hi, any_finite_scale))
        raw[:, IQ1M_SCALES:IQ1M_SCALES + 8] = T.with_iq1m_scale(raw[:, IQ1M_SCALES:IQ1M_SCALES + 8], d)
    return raw.tobytes(), n


def _scales(nb, rng, scale_lo, scale_hi, any_finite_scale):
    if any_finite_scale:
        return st.lists(finite_f16(), min_size=nb, max_size=nb).map(lambda v: np.array(v, np.float16))
    sign = rng.choice([-1.0, 1.0], size=nb)
    return st.lists(st.floats(scale_lo, scale_hi), min_size=nb, max_size=nb).map(
        lambda m: (np.array(m) * sign).astype(np.float16))


@st.composite
def vectors(draw, n, scale=None):
    """float32 (n,) with a random overall scale, sometimes with exact zeros and repeats."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    s = draw(st.sampled_from([1e-3, 0.1, 1.0, 30.0])) if scale is None else scale
    kind = draw(st.sampled_from(["normal", "uniform", "sparse", "ties"]))
    if kind == "normal":
        x = rng.standard_normal(n) * s
    elif kind == "uniform":
        x = rng.uniform(-s, s, n)
    elif kind == "sparse":
        x = rng.standard_normal(n) * s * (rng.random(n) < 0.2)
    else:  # many equal magnitudes: ties for the argmax and for rounding
        x = rng.choice([-s, s, s / 2, -s / 4, 0.0], n)
    return x.astype(np.float32)
