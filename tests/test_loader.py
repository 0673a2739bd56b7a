"""Format tests: one defect per file for every check of the loader, and truncations.

Every bad file must raise guanaco_rt.FormatError (a GuanacoError) naming the file and
the field; none may crash or allocate by a hostile count.
"""
import struct

import pytest

import guanaco_rt
from guanaco_rt import ggml_file
from guanaco_rt.errors import FormatError, GuanacoError, UnsupportedVersionError

from helpers import FileLayout, tiny_model

# hparams field offsets
N_VOCAB, N_EMBD, N_MULT, N_HEAD, N_LAYER, N_ROT, FTYPE = (8 + 4 * i for i in range(7))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small valid q4_0 file (n_embd 32, 1 layer, 259+ vocab): its bytes and layout."""
    path = tiny_model(tmp_path_factory.mktemp("m"), "q4_0", n_vocab=262, n_embd=32, n_head=2, n_layer=1, n_mult=32)
    with open(path, "rb") as f:
        data = f.read()
    return FileLayout(data)


def load_bytes(tmp_path, data, name="bad.bin"):
    p = tmp_path / name
    p.write_bytes(data)
    return guanaco_rt.Model(str(p))


def expect_error(tmp_path, data, *fragments, cls=FormatError):
    with pytest.raises(cls) as ei:
        load_bytes(tmp_path, data)
    msg = str(ei.value)
    assert "bad.bin" in msg, msg
    for frag in fragments:
        assert frag in msg, msg
    assert isinstance(ei.value, GuanacoError)
    return msg


def test_valid_small_file_loads(tmp_path, small):
    m = load_bytes(tmp_path, small.data, "ok.bin")
    assert m.hparams.n_embd == 32 and m.hparams.n_layer == 1 and m.hparams.n_ff == 96
    assert len(m.tensors) == 3 + 9


def test_format_error_is_a_guanaco_error_and_value_error():
    assert issubclass(FormatError, GuanacoError) and issubclass(FormatError, ValueError)


@pytest.mark.parametrize("magic,version,fragment", [
    (b"lmgg", None, "unversioned 'ggml'"),
    (b"fmgg", 1, "'ggmf'"),
    (b"tjgg", 1, "ggjt version 1"),
    (b"tjgg", 2, "ggjt version 2"),
    (b"tjgg", 4, "ggjt version 4 is unknown"),
])
def test_old_and_foreign_containers_are_refused_with_their_version(tmp_path, small, magic, version, fragment):
    data = magic + (struct.pack("<I", version) if version is not None else small.data[4:8]) + small.data[8:]
    msg = expect_error(tmp_path, data, fragment, cls=UnsupportedVersionError)
    if version in (1, 2) or magic != b"tjgg":
        assert "re-convert" in msg or "GGUF" in msg


def test_gguf_magic_on_a_ggjt_body_is_read_as_gguf_and_refused(tmp_path, small):
    # GGUF files are read now (gguf_file.py): a ggjt body behind GGUF's magic is a malformed GGUF
    data = b"GGUF" + struct.pack("<I", 3) + small.data[8:]
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    with pytest.raises(FormatError, match="n_tensors|n_kv"):
        guanaco_rt.Model(path)


def test_wrong_magic(tmp_path, small):
    expect_error(tmp_path, b"\x00\x01\x02\x03" + small.data[4:], "magic", "0x03020100")


def test_empty_and_tiny_files(tmp_path):
    expect_error(tmp_path, b"", "0 bytes")
    expect_error(tmp_path, b"tjgg", "4 bytes")


@pytest.mark.parametrize("offset,value,fragments", [
    (N_VOCAB, 0, ["hparams.n_vocab", "0"]),
    (N_VOCAB, -5, ["hparams.n_vocab", "-5"]),
    (N_VOCAB, 2**31 - 1, ["hparams.n_vocab", "2147483647"]),
    (N_VOCAB, 300000, ["hparams.n_vocab", "300000", "remain"]),
    (N_EMBD, 0, ["hparams.n_embd"]),
    (N_EMBD, -32, ["hparams.n_embd", "-32"]),
    (N_EMBD, 1 << 20, ["hparams.n_embd", str(1 << 20)]),
    (N_MULT, 0, ["hparams.n_mult"]),
    (N_HEAD, 0, ["hparams.n_head"]),
    (N_HEAD, 3, ["hparams.n_head", "not a multiple"]),
    (N_HEAD, 64, ["hparams.n_head", "64"]),
    (N_LAYER, 0, ["hparams.n_layer"]),
    (N_LAYER, 100000, ["hparams.n_layer", "100000"]),
    (N_ROT, 0, ["hparams.n_rot"]),
    (N_ROT, 17, ["hparams.n_rot", "17"]),
    (N_ROT, 15, ["hparams.n_rot", "15"]),
    (FTYPE, 99, ["hparams.ftype", "99"]),
    (FTYPE, -1, ["hparams.ftype"]),
])
def test_bad_hparams(tmp_path, small, offset, value, fragments):
    expect_error(tmp_path, small.patch(offset, "<i", value), *fragments)


def test_legacy_ftype_is_refused(tmp_path, small):
    expect_error(tmp_path, small.patch(FTYPE, "<i", 4), "ftype 4", cls=UnsupportedVersionError)


def test_n_layer_mismatch_with_tensors(tmp_path, small):
    # the header claims 2 layers, the file holds 1
    expect_error(tmp_path, small.patch(N_LAYER, "<i", 2), "missing", "layers.1.")


def test_n_embd_mismatch_with_tensors(tmp_path, small):
    expect_error(tmp_path, small.patch(N_EMBD, "<i", 64), "shape")


def test_vocab_length_huge(tmp_path, small):
    expect_error(tmp_path, small.patch(small.vocab_entries[10], "<I", 0xFFFFFFF0), "vocab[10].length", "4294967280")


def test_vocab_length_past_end(tmp_path, small):
    at = small.vocab_entries[-1]
    expect_error(tmp_path, small.patch(at, "<I", 4000)[:at + 200], "vocab[261].text", "4000 bytes")


def test_vocab_score_nan(tmp_path, small):
    at = small.vocab_entries[5]
    n = struct.unpack_from("<I", small.data, at)[0]
    expect_error(tmp_path, small.patch(at + 4 + n, "<f", float("nan")), "vocab[5].score", "nan")


def _tensor_patch(small, name, field, value):
    t = small.tensor(name)
    off = {"n_dims": 0, "name_len": 4, "type": 8, "ne0": 12, "ne1": 16}[field]
    return small.patch(t["at"] + off, "<i", value)


@pytest.mark.parametrize("field,value,fragments", [
    ("n_dims", 0, ["n_dims", "0"]),
    ("n_dims", 3, ["n_dims", "3"]),
    ("n_dims", -1, ["n_dims", "-1"]),
    ("name_len", 0, ["name length"]),
    ("name_len", 1 << 30, ["name length", str(1 << 30)]),
    ("type", 5, ["type", "value 5"]),          # the withdrawn Q4_2
    ("type", 9, ["type", "value 9"]),          # Q8_1 is an activation format only
    ("type", 77, ["type", "value 77"]),
    ("type", -3, ["type", "-3"]),
    ("type", 20, ["type", "value 20", "IQ4_NL", "ggjt v3"]),   # GGUF-era types: no ggjt file holds them
    ("type", 30, ["type", "value 30", "BF16", "ggjt v3"]),
    ("ne0", -32, ["ne[0]", "-32"]),
    ("ne0", 0, ["ne[0]"]),
    ("ne0", 48, ["ne[0]", "48", "block size 32"]),
    ("ne0", 64, ["shape", "(64, "]),
    ("ne1", 2**31 - 1, ["2147483647"]),
    ("ne1", -1, ["ne[1]", "-1"]),
])
def test_bad_tensor_header(tmp_path, small, field, value, fragments):
    msg = expect_error(tmp_path, _tensor_patch(small, "layers.0.attention.wq.weight", field, value), *fragments)
    assert "tensor" in msg


def test_tensor_with_unknown_name(tmp_path, small):
    t = small.tensor("layers.0.attention.wk.weight")
    data = bytearray(small.data)
    name_at = t["end_hdr"] - len(t["name"])
    data[name_at:name_at + len("layers.0.attention.wk")] = b"layers.0.attention.wz"
    expect_error(tmp_path, bytes(data), "layers.0.attention.wz.weight", "not a tensor")


def test_duplicate_tensor(tmp_path, small):
    t = small.tensor("layers.0.attention.wk.weight")
    data = bytearray(small.data)
    name_at = t["end_hdr"] - len(t["name"])
    data[name_at:name_at + len(t["name"])] = b"layers.0.attention.wq.weight"
    expect_error(tmp_path, bytes(data), "layers.0.attention.wq.weight", "twice")


def test_norm_tensor_must_be_f32(tmp_path, small):
    # turning the 1-D norm into F16 keeps the data size check satisfiable but is refused
    expect_error(tmp_path, _tensor_patch(small, "norm.weight", "type", 1), "norm.weight", "F32")


def test_tensor_data_past_end(tmp_path, small):
    expect_error(tmp_path, small.data[:-1], "output.weight" if small.tensors[-1]["name"] == "output.weight"
                 else small.tensors[-1]["name"], "past the end")


def test_trailing_garbage_is_refused(tmp_path, small):
    expect_error(tmp_path, small.data + b"\x01\x00\x00\x00", "truncated")


def _check_truncations(small, points):
    for n in points:
        with pytest.raises(FormatError):
            ggml_file.parse("trunc.bin", small.data[:n])


def test_every_truncation_point(small):
    _check_truncations(small, range(len(small.data)))


def test_truncated_file_through_model(tmp_path, small):
    for n in (5, 40, small.vocab_entries[100] + 2, small.tensors[3]["at"] + 7, len(small.data) - 100):
        expect_error(tmp_path, small.data[:n])


def test_loaded_model_keeps_weights_in_the_mmap(tmp_path, small):
    m = load_bytes(tmp_path, small.data, "ok.bin")
    view = m.tensor_data("output.weight")
    assert not view.flags.writeable
    assert not view.flags.owndata
    t = m.tensors["output.weight"]
    assert t.offset % 32 == 0
    assert view.tobytes() == small.data[t.offset:t.offset + t.nbytes]


@pytest.mark.parametrize("shape", [(5120, 40, 40), (6656, 52, 60), (8192, 64, 80)], ids=["13B", "33B", "65B"])
def test_big_shapes_validate_from_hparams(shape):
    n_embd, n_head, n_layer = shape
    hp = ggml_file.HParams(32000, n_embd, 256, n_head, n_layer, n_embd // n_head, 2)
    shapes = ggml_file.expected_shapes(hp)
    assert shapes["layers.0.feed_forward.w1.weight"] == (n_embd, {5120: 13824, 6656: 17920, 8192: 22016}[n_embd])
    assert len(shapes) == 3 + 9 * n_layer


def test_7b_n_ff():
    assert ggml_file.HParams(32000, 4096, 256, 32, 32, 128, 2).n_ff == 11008
