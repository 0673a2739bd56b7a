"""The i-quant lattices of guanaco_rt/_kernels/iq_grids.h are gguf-py's (gguf/quants.py), value for
value, and the header is what tools/gen_iq_grids.py writes today."""
import os
import re
import sys

import numpy as np
import pytest
from gguf import quants

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, os.pardir, "guanaco_rt", "_kernels", "iq_grids.h")
GEN = os.path.join(HERE, os.pardir, "tools")


def header_tables():
    """{C name: int array of the declared shape}, parsed from the header's text."""
    text = open(HEADER).read()
    out = {}
    for m in re.finditer(r"static const u?int8_t (\w+)((?:\[\d+\])+) = \{(.*?)\};", text, re.S):
        shape = tuple(int(d) for d in re.findall(r"\[(\d+)\]", m.group(2)))
        vals = [int(v, 0) for v in re.findall(r"-?(?:0x[0-9a-fA-F]+|\d+)", m.group(3))]
        out[m.group(1)] = np.array(vals, np.int64).reshape(shape)
    return out


@pytest.mark.parametrize("name,cls", [("gr_iq2xxs_grid", "IQ2_XXS"), ("gr_iq2xs_grid", "IQ2_XS"),
                                      ("gr_iq2s_grid", "IQ2_S"), ("gr_iq3xxs_grid", "IQ3_XXS"),
                                      ("gr_iq3s_grid", "IQ3_S"), ("gr_iq1s_grid", "IQ1_S"), ("gr_iq1s_grid", "IQ1_M")])
def test_grid_equals_gguf(name, cls):
    c = getattr(quants, cls)
    c.init_grid()
    want = np.asarray(c.grid, np.float32).reshape(c.grid_shape)
    got = header_tables()[name]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_ksigns_equal_gguf():
    want = np.frombuffer(quants.IQ2_XXS.ksigns, np.uint8)
    np.testing.assert_array_equal(header_tables()["gr_ksigns_iq2xs"], want)
    # and the fact the kernels rely on: the 8th sign bit makes the number of minus signs even
    assert all(bin(int(v)).count("1") % 2 == 0 for v in want)


def test_header_is_what_the_generator_writes():
    sys.path.insert(0, GEN)
    try:
        import gen_iq_grids
    finally:
        sys.path.remove(GEN)
    assert open(HEADER).read() == gen_iq_grids.render()
