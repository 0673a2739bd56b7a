"""The DRY ("don't repeat yourself") sampler: penalty values on hand-built histories,
computed by hand; the C pass against a brute-force definition; off by default and then
bit-identical to the chain without it; the keyword on Session, LLM and the command line."""
import math

import numpy as np
import pytest

import guanaco_rt
from guanaco_rt import cli
from guanaco_rt.api import LLM
from guanaco_rt.errors import InvalidRequestError
from guanaco_rt.sampling import DEFAULTS, Sampler, SamplingParams, dry_breaker_ids

from reference import sample_penalize


class Tok:
    """A tokenizer stand-in: token i's text is texts[i] (all DRY reads is the byte table)."""

    def __init__(self, texts):
        data = [t.encode() for t in texts]
        self.byte_table = (np.frombuffer(b"".join(data) or b"\0", np.uint8),
                           np.cumsum([0] + [len(d) for d in data]), np.ones(len(data), np.uint8))


def dry(history, n_vocab=8, tok=None, **kw):
    p = SamplingParams(temperature=0, **kw)
    core = Sampler(0).core(p, n_vocab, tok)
    return core.penalize(np.zeros(n_vocab, np.float32), np.asarray(history, np.int32))


def test_llama_cpp_example():
    # llama.cpp's own illustration: "a b c c b c y a b c". The tail "a b c" also ends at
    # position 2, so c (which followed it) would make a repeat of 4: 1.75^(3-2); "b c" ends
    # at position 5, so y would make 3: 1.75^0. "c" alone (position 3) is under the allowed 2.
    a, b, c, y = 0, 1, 2, 3
    x = dry([a, b, c, c, b, c, y, a, b, c], dry_multiplier=1.0, dry_base=1.75, dry_allowed_length=2)
    assert x.tolist() == [0, 0, -1.75, -1.0, 0, 0, 0, 0]


def test_hand_computed_values():
    h = [1, 2, 3, 1, 2, 3, 1, 2]
    # the tail "1 2 3 1 2" ends at index 4 (5 long), followed by 3: 0.8 * 1.75^(5-2)
    x = dry(h, dry_multiplier=0.8)
    want = np.zeros(8)
    want[3] = -0.8 * 1.75 ** 3
    assert np.allclose(x, want, rtol=1e-15, atol=0)
    # a window of 4 tokens "2 3 1 2": the tail "2" ends at its start, followed by 3, 1 long
    assert not dry(h, dry_multiplier=0.8, dry_penalty_last_n=4).any()
    x = dry(h, dry_multiplier=0.8, dry_penalty_last_n=4, dry_allowed_length=1)
    assert x[3] == -0.8 and np.count_nonzero(x) == 1
    # base 1: the multiplier alone, for any length
    assert dry(h, dry_multiplier=0.5, dry_base=1.0)[3] == -0.5


def test_sequence_breakers():
    h = [1, 2, 3, 1, 2, 3, 1, 2]
    tok = Tok(["a", "b", "c", "\n", "e", "f", "g", "h"])
    # 3 ("\n") is a breaker: the repeat cannot reach back past the 3 at index 5 (2 tokens),
    # and 3 itself, the token that would extend it, is never penalized
    assert dry_breaker_ids(tok, DEFAULTS["dry_sequence_breakers"]).tolist() == [3]
    assert not dry(h, tok=tok, dry_multiplier=0.8).any()
    # a breaker at index 6 leaves 1 token after it: below the allowed length, no penalty
    tok = Tok(["a", ":", "c", "d", "e", "f", "g", "h"])
    assert not dry(h, tok=tok, dry_multiplier=0.8).any()
    # breakers of one's own choice, held inside a longer token text
    tok = Tok(["a", "b", "c", "x--y", "e", "f", "g", "h"])
    assert not dry(h, tok=tok, dry_multiplier=0.8, dry_sequence_breakers=["--"]).any()
    assert dry(h, tok=tok, dry_multiplier=0.8, dry_sequence_breakers=[])[3] < 0


def test_exponent_capped_as_float32_allows():
    # 203 equal tokens: the token would extend a repeat of 202; exponent 200 is capped at
    # int(ln(FLT_MAX) / ln(1.75)) = 158, so the penalty stays finite
    x = dry([7] * 203, dry_multiplier=2.0)
    cap = int(88.7228391 / math.log(1.75))
    assert cap == 158
    assert np.isfinite(x[7]) and math.isclose(x[7], -2.0 * 1.75 ** cap, rel_tol=1e-12)


def brute_force(history, p, breakers):
    """DRY by its definition, in O(n^2): for every earlier end position j, how long the
    window's tail also ends at j (not reaching back past the last breaker)."""
    n = len(history) if p.dry_penalty_last_n < 0 else min(p.dry_penalty_last_n, len(history))
    w = list(history[len(history) - n:])
    out = {}
    if n <= p.dry_allowed_length:
        return out
    lim = next((k for k in range(n) if w[n - 1 - k] in breakers), n)
    for j in range(n - 1):
        m = 0
        while m <= j and w[j - m] == w[n - 1 - m]:
            m += 1
        m = min(m, lim)
        if m >= p.dry_allowed_length:
            out[w[j + 1]] = max(out.get(w[j + 1], 0), m)
    cap = int(88.7228391 / math.log(p.dry_base)) if p.dry_base > 1.000001 else 0
    return {t: p.dry_multiplier * p.dry_base ** (min(m - p.dry_allowed_length, cap) if cap else
                                                   m - p.dry_allowed_length)
            for t, m in out.items() if t not in breakers}


def test_against_the_definition():
    rng = np.random.default_rng(7)
    for trial in range(300):
        n_vocab = int(rng.integers(2, 7))
        hist = rng.integers(0, n_vocab, int(rng.integers(0, 60))).tolist()
        if trial % 3 == 0 and hist:                  # long repeats
            hist = (hist[:int(rng.integers(1, 6))] * 20)[:len(hist)]
        texts = [chr(97 + i) for i in range(n_vocab)]
        if trial % 2:
            texts[int(rng.integers(0, n_vocab))] = "\n"
        p = SamplingParams(temperature=0, dry_multiplier=float(rng.uniform(0.1, 2)),
                           dry_base=float(rng.choice([1.0, 1.75, 3.0])), dry_allowed_length=int(rng.integers(0, 4)),
                           dry_penalty_last_n=int(rng.choice([-1, 5, 17])))
        logits = rng.normal(size=n_vocab).astype(np.float32)
        got = Sampler(0).core(p, n_vocab, Tok(texts)).penalize(logits, np.asarray(hist, np.int32))
        want = logits.astype(np.float64)
        for t, v in brute_force(hist, p, {i for i, s in enumerate(texts) if s == "\n"}).items():
            want[t] -= v
        assert np.allclose(got, want, rtol=1e-12, atol=1e-12), (trial, hist, p)


def test_off_by_default_and_then_the_chain_of_today():
    assert DEFAULTS["dry_multiplier"] == 0 and SamplingParams().dry_multiplier == 0
    rng = np.random.default_rng(3)
    for _ in range(50):
        logits = rng.normal(size=40).astype(np.float32)
        hist = rng.integers(0, 5, 50).tolist()        # full of repeats
        p = SamplingParams(repetition_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.1,
                           dry_base=3.0, dry_allowed_length=0)     # settings without a multiplier do nothing
        got = Sampler(0).core(p, 40, Tok([str(i) for i in range(40)])).penalize(logits, np.asarray(hist, np.int32))
        assert np.array_equal(got, sample_penalize(logits, hist, p))


@pytest.mark.parametrize("bad", [{"dry_multiplier": -1}, {"dry_base": 0.5}, {"dry_allowed_length": -1},
                                 {"dry_penalty_last_n": -2}, {"dry_sequence_breakers": "\n"},
                                 {"dry_sequence_breakers": [""]}, {"dry_multiplier": float("nan")}])
def test_bad_settings(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


@pytest.fixture(scope="module")
def model(smollm2):
    m = guanaco_rt.Model(smollm2, n_threads=2)
    yield m
    m.close()


LOOP = "Count: 1 2 3 1 2 3 1 2 3 1 2 3 1 2 3 1 2 3"


def longest_repeat(ids):
    """The longest run of tokens that occurs twice (overlapping allowed)."""
    best = 0
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            k = 0
            while j + k < len(ids) and ids[i + k] == ids[j + k]:
                k += 1
            best = max(best, k)
    return best


def test_session_keywords(model):
    with guanaco_rt.Session(model, n_ctx=256, seed=1) as s:
        plain = s.generate(LOOP, 40, temperature=0).tokens
        assert s.generate(LOOP, 40, temperature=0, dry_multiplier=0.0, dry_base=5.0).tokens == plain
        with_dry = s.generate(LOOP, 40, temperature=0, dry_multiplier=0.8, dry_allowed_length=2).tokens
        assert longest_repeat(plain) > 10                # the demo model counts on and on
        assert longest_repeat(with_dry) < longest_repeat(plain)


def test_llm_and_cli_parameters(model):
    llm = LLM(model, n_ctx=256)
    a = llm.create_completion(LOOP, max_tokens=30, temperature=0)
    b = llm.create_completion(LOOP, max_tokens=30, temperature=0, dry_multiplier=0.8, dry_base=1.75,
                              dry_allowed_length=2, dry_penalty_last_n=-1, dry_sequence_breakers=["\n"])
    assert a["choices"][0]["text"] != b["choices"][0]["text"]
    for name, v in (("dry_multiplier", -1), ("dry_base", 0.9), ("dry_penalty_last_n", 1.5),
                    ("dry_sequence_breakers", "\n")):
        with pytest.raises(InvalidRequestError) as e:
            llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=2, **{name: v})
        assert e.value.param == name
    a = cli.build_parser().parse_args(["generate", "m.gguf", "-p", "x", "--dry-multiplier", "0.8", "--dry-base", "2",
                                       "--dry-allowed-length", "3", "--dry-penalty-last-n", "64",
                                       "--dry-sequence-breaker", "\\n", "--dry-sequence-breaker", "###"])
    p = cli._params(a)
    assert (p.dry_multiplier, p.dry_base, p.dry_allowed_length, p.dry_penalty_last_n,
            p.dry_sequence_breakers) == (0.8, 2.0, 3, 64, ("\n", "###"))
    assert cli._params(cli.build_parser().parse_args(["generate", "m.gguf", "-p", "x"])).dry_multiplier == 0
