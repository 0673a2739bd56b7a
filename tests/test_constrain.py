"""Constrained decoding (issue 24): JSON schemas, regexes, grammars and choices through
llguidance, on the demo model (byte-level BPE, 49152 tokens) and on a random-weight model
with the real LLaMA SentencePiece vocabulary (byte-fallback pieces, the dummy prefix).

What must hold: every output is one the constraint accepts (checked by jsonschema, re
and a fresh matcher, not by the code under test), the constraint's end is finish_reason
"stop", the limits of a generation (max_new_tokens, stop strings, cancel) still apply,
and a constraint that cannot be compiled is a ConstraintError naming what is wrong.
"""
import json
import re
import threading

import jsonschema
import numpy as np
import pytest
from test_hardening3_tok import write_spm_gguf

import guanaco_rt
from guanaco_rt import constrain
from guanaco_rt.errors import ConstraintError, InvalidArgumentError
from guanaco_rt.sampling import Sampler, SamplingParams

PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 24},
                         "age": {"type": "integer", "minimum": 0, "maximum": 150},
                         "email": {"type": "string", "format": "email", "maxLength": 40},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1,
                                  "maxItems": 3}},
          "required": ["name", "age", "tags"], "additionalProperties": False}


@pytest.fixture(scope="module")
def demo(smollm2):
    m = guanaco_rt.Model(smollm2, n_threads=1)
    yield m
    m.close()


@pytest.fixture(scope="module")
def spm(shared_data, tmp_path_factory):
    m = guanaco_rt.Model(write_spm_gguf(tmp_path_factory.mktemp("spm") / "c.gguf", shared_data, n_embd=32),
                         n_threads=1)
    yield m
    m.close()


def allowed(words, n_vocab):
    bits = np.unpackbits(np.asarray(words).view(np.uint8), bitorder="little")[:n_vocab]
    return np.flatnonzero(bits)


def replay(model, constraint_kw, tokens):
    """A fresh matcher takes ``tokens`` one by one -> True if it accepts each and ends accepting."""
    c, _ = constrain.compile_constraint(model, **constraint_kw)
    g = c.guide()
    for t in tokens:
        if not g.matcher.consume_token(int(t)):
            return False
    return g.matcher.is_accepting()


def replay_prefix(model, constraint_kw, tokens):
    c, _ = constrain.compile_constraint(model, **constraint_kw)
    m = c.guide().matcher
    return all(m.consume_token(int(t)) for t in tokens)


# -- the sampler's mask -------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_mask_is_a_ban_of_every_other_token(temperature):
    """A mask samples exactly what logit_bias -inf on every disallowed token samples: same
    tokens and log-probabilities from the same seed."""
    rng = np.random.default_rng(3)
    n = 1000
    for trial in range(20):
        logits = rng.normal(size=n).astype(np.float32) * 3
        ok = rng.random(n) < 0.05
        ok[rng.integers(n)] = True
        padded = np.zeros(32 * ((n + 31) // 32), bool)
        padded[:n] = ok
        words = np.packbits(padded, bitorder="little").view(np.uint32)
        p = SamplingParams(temperature=temperature, n_probs=3)
        masked = Sampler(trial).core(p, n)
        masked.set_mask(words)
        banned = Sampler(trial).core(SamplingParams(temperature=temperature, n_probs=3,
                                                    logit_bias={int(i): float("-inf") for i in np.flatnonzero(~ok)}), n)
        hist = np.zeros(0, np.int32)
        for _ in range(5):
            a, b = masked.sample(logits, hist), banned.sample(logits, hist)
            assert a == b
            assert ok[a[0]]


def test_mask_shape_is_checked():
    core = Sampler(0).core(SamplingParams(), 100)
    with pytest.raises(ValueError, match="4 words"):
        core.set_mask(np.zeros(3, np.int32))
    with pytest.raises(ValueError):
        core.set_mask(np.zeros(4, np.float32))
    core.set_mask(None)


# -- the vocabulary bridge ------------------------------------------------------------------
@pytest.mark.parametrize("which", ["demo", "spm"])
def test_special_tokens_never_match_text(which, request):
    """Control tokens (<|im_end|>, <s>, [INST]) are set apart: a grammar that accepts any
    text never allows them, and only the end-of-generation tokens end a constraint."""
    model = request.getfixturevalue(which)
    c, _ = constrain.compile_constraint(model, regex=r"(.|\n)*")
    g = c.guide()
    g.start_mask()
    ids = set(allowed(g.mask(), model.n_vocab).tolist())
    g.close()
    tok = model.tokenizer
    eog = set(tok.eog_ids or ()) | {tok.eos_id}
    control = {i for s, i in tok.special if i not in eog}
    assert control and not (control & ids)
    assert eog & ids                                  # accepting: the generation may end
    text_bytes = constrain.token_bytes_for_engine(tok, model.n_vocab)
    assert all(text_bytes[i][:1] != b"\xff" for i in ids - eog)


def test_sentencepiece_bytes_are_the_decoded_text(spm):
    """The engine sees the LLaMA pieces as the decode loop writes them: the word marker as a
    space, byte pieces as their byte."""
    b = constrain.token_bytes_for_engine(spm.tokenizer, spm.n_vocab)
    assert b[15043] == b" Hello"               # "\u2581Hello"
    assert b[3 + 0x41] == b"A"                  # <0x41>
    assert b[1][:1] == b"\xff" and b[2][:1] == b"\xff"      # <s>, </s>


# -- generation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_outputs_validate(demo, temperature):
    s = guanaco_rt.Session(demo, n_threads=1, seed=7)
    for i, ask in enumerate(["Describe a person as JSON.", "A new user record, JSON please.",
                             "Give me JSON for Alice, 30, tags a and c."]):
        s.reset()
        r = s.chat(ask, json_schema=PERSON, temperature=temperature, max_new_tokens=200)
        assert r.result.finish_reason == "stop", r
        value = json.loads(str(r))
        jsonschema.validate(value, PERSON)
        assert r.parsed == value
        assert replay(demo, {"json_schema": PERSON}, r.result.tokens)


def test_pydantic_model_is_parsed(demo):
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):
        name: str
        country: str
        population: int

    s = guanaco_rt.Session(demo, n_threads=1)
    r = s.chat("What is the capital of France? Answer as JSON.", json_schema=City, temperature=0)
    assert isinstance(r.parsed, City)
    assert r.parsed == City.model_validate_json(str(r))
    # the schema's keys in its order, and no others: pydantic writes no additionalProperties,
    # which llama.cpp's schema grammars read as none (the demo model added "capital" before)
    assert list(json.loads(str(r))) == ["name", "country", "population"]


def test_random_model_sentencepiece_json(spm):
    """Random weights sample all over the vocabulary: the LLaMA pieces (dummy prefix, byte
    pieces) must still give valid JSON every time."""
    schema = {"type": "object", "properties": {"id": {"type": "integer"}, "word": {"type": "string",
                                                                                    "pattern": "^[a-z]{1,8}$"},
                                               "ok": {"type": "boolean"}},
              "required": ["id", "word", "ok"]}
    s = guanaco_rt.Session(spm, n_threads=1, seed=1)
    for _ in range(6):
        r = s.generate("{", json_schema=schema, temperature=1.5, max_new_tokens=400)
        if r.finish_reason == "length":
            continue                                # random weights may ramble inside a string
        assert r.finish_reason == "stop"
        jsonschema.validate(json.loads(r.text), schema)
        assert replay(spm, {"json_schema": schema}, r.tokens)


@pytest.mark.parametrize("which", ["demo", "spm"])
def test_regex_and_choices(which, request):
    model = request.getfixturevalue(which)
    s = guanaco_rt.Session(model, n_threads=1, seed=2)
    for t in (0.0, 1.0):
        r = s.generate("Today's date: ", regex=r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]", temperature=t)
        assert re.fullmatch(r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]", r.text), r.text
        assert r.finish_reason == "stop"
        r = s.generate("Pick a colour: ", choices=["red", "green", "blue sky"], temperature=t)
        assert r.text in ("red", "green", "blue sky") and r.finish_reason == "stop"


GBNF = r'''
root ::= "(" expr ")"
expr ::= num (" " op " " num)*
op ::= "+" | "-" | "*"
num ::= [1-9] [0-9]?
'''
LARK = r'''
start: "(" expr ")"
expr: NUM (" " OP " " NUM)*
OP: "+" | "-" | "*"
NUM: /[1-9][0-9]?/
'''


@pytest.mark.parametrize("grammar", [GBNF, LARK], ids=["gbnf", "lark"])
def test_grammar(demo, grammar):
    s = guanaco_rt.Session(demo, n_threads=1, seed=5)
    for t in (0.0, 1.2):
        r = s.generate("An arithmetic expression: ", grammar=grammar, temperature=t, max_new_tokens=60)
        if r.finish_reason == "length":
            assert re.fullmatch(r"\((?:[1-9][0-9]?(?: [+*-] )?)*", r.text), r.text
            continue
        assert r.finish_reason == "stop"
        assert re.fullmatch(r"\([1-9][0-9]?( [+*-] [1-9][0-9]?)*\)", r.text), r.text


def test_limits_still_apply(demo):
    s = guanaco_rt.Session(demo, n_threads=1)
    r = s.chat("A person as JSON", json_schema=PERSON, max_new_tokens=4, temperature=0)
    assert r.result.finish_reason == "length" and r.parsed is None and len(r.result.tokens) == 4
    s.reset()
    r = s.generate(s.chat_prompt("A person as JSON"), json_schema=PERSON, stop=['"age"'], temperature=0)
    assert r.finish_reason == "stop" and '"age"' not in r.text and r.parsed is None


def test_stream_pieces_are_the_text(demo):
    s = guanaco_rt.Session(demo, n_threads=1)
    st = s.stream(s.chat_prompt("A person as JSON"), json_schema=PERSON, temperature=0, max_new_tokens=200)
    pieces = list(st)
    assert len(pieces) > 3 and "".join(pieces) == st.result.text
    jsonschema.validate(json.loads(st.result.text), PERSON)


def test_cancel_under_a_constraint(demo):
    s = guanaco_rt.Session(demo, n_threads=1)
    st = s.stream(s.chat_prompt("A long JSON list"), json_schema={"type": "array", "items": {"type": "string"},
                                                                   "minItems": 500}, temperature=0,
                  max_new_tokens=2000)
    n = 0
    for _ in st:
        n += 1
        if n == 5:
            s.cancel()
    assert st.result.finish_reason == "cancelled"
    r = s.generate("1 + 1 = ", choices=["2", "3"], temperature=0)     # the session is usable again
    assert r.text in ("2", "3")


def test_sessions_in_threads(demo):
    """Constrained generations in several threads at once, each valid (each has its own
    matcher and mask thread)."""
    out, errors = [], []

    def run(seed):
        try:
            s = guanaco_rt.Session(demo, n_threads=1, seed=seed)
            r = s.chat("A person as JSON", json_schema=PERSON, temperature=1.0, max_new_tokens=200)
            out.append(r)
        except Exception as e:        # pragma: no cover - reported below
            errors.append(e)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and len(out) == 4
    for r in out:
        if r.result.finish_reason == "stop":
            jsonschema.validate(json.loads(str(r)), PERSON)


def test_no_worker_threads_left(demo):
    before = {t.ident for t in threading.enumerate()}
    s = guanaco_rt.Session(demo, n_threads=1)
    s.generate("x", choices=["a", "b"])
    s.generate("x", choices=["a", "b"], max_new_tokens=0)
    with pytest.raises(ZeroDivisionError):
        s.generate("x", regex="[a-z]{50}", callback=lambda p: 1 / 0)
    left = [t for t in threading.enumerate() if t.ident not in before and t.name == "guanaco_rt-mask"]
    assert not left


# -- compile: cache, errors, limits ---------------------------------------------------------------
def test_compiled_constraints_are_cached(demo):
    a, _ = constrain.compile_constraint(demo, json_schema=PERSON)
    b, _ = constrain.compile_constraint(demo, json_schema=json.dumps(PERSON))
    assert a is b
    c, _ = constrain.compile_constraint(demo, json_schema=PERSON, strict=False)
    assert c is not a


@pytest.mark.parametrize("kw, match", [
    ({"json_schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}, "strin"),
    ({"json_schema": "{not json"}, "not JSON"),
    ({"json_schema": [1, 2]}, "must be an object"),
    ({"json_schema": {"type": "string", "format": "no-such-format"}}, "no-such-format"),
    ({"regex": "(unclosed"}, "regex"),
    ({"grammar": "root ::= (("}, "grammar"),
    ({"choices": []}, "choices"),
    ({"choices": ["a", 3]}, "non-string"),
    ({"choices": "abc"}, "list of strings"),
    ({"regex": 5}, "must be a str"),
    ({"regex": "a", "choices": ["a"]}, "one constraint"),
])
def test_bad_constraints_are_typed(demo, kw, match):
    s = guanaco_rt.Session(demo, n_threads=1)
    with pytest.raises(ConstraintError, match=match) as e:
        s.generate("x", **kw)
    assert isinstance(e.value, InvalidArgumentError) and e.value.param in constrain.KINDS


def test_unknown_keyword_strict_and_lenient(demo):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "unevaluatedProperties": False, "dependentSchemas": {"a": {"required": ["b"]}}}
    with pytest.raises(ConstraintError, match="dependentSchemas"):
        constrain.compile_constraint(demo, json_schema=schema)
    c, _ = constrain.compile_constraint(demo, json_schema=schema, strict=False)
    assert c.kind == "json_schema"


def test_hostile_schemas_are_bounded(demo):
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "pattern": "^[a-z]{3,9}$"}
                                            for i in range(20000)}}
    with pytest.raises(ConstraintError, match="above the limit"):
        constrain.compile_constraint(demo, json_schema=big)
    deep: dict = {"type": "string"}
    for _ in range(200000):
        deep = {"type": "array", "items": deep}
    with pytest.raises(ConstraintError):
        constrain.compile_constraint(demo, json_schema=deep)
    # what would explode an eager automaton: the engine builds it lazily, within its fuel
    # limits, so each compiles (or is refused) and a generation under it runs
    s = guanaco_rt.Session(demo, n_threads=1)
    for kw in ({"regex": "(a|b)*a(a|b){40}"}, {"regex": "((a{1000}){1000}){1000}"},
               {"json_schema": {"type": "object", "properties": {f"p{i}": {"type": "string", "pattern": "^[a-z]{3,9}$"}
                                                                 for i in range(3000)}}}):
        try:
            r = s.generate("x", max_new_tokens=8, temperature=0, **kw)
        except ConstraintError:
            continue
        assert len(r.tokens) == 8 and replay_prefix(demo, kw, r.tokens)


# -- the command line -------------------------------------------------------------------------------
def test_cli_constraints(smollm2, tmp_path, capsys):
    from guanaco_rt import cli
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                                  "required": ["city"], "additionalProperties": False}))
    assert cli.main(["run", smollm2, "-p", "Name a city in France.", "--chat", "--json-schema", str(schema),
                     "-n", "60", "-t", "1", "--no-stats"]) == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), json.loads(schema.read_text()))
    gbnf = tmp_path / "g.gbnf"
    gbnf.write_text('root ::= "yes" | "no"\n')
    assert cli.main(["run", smollm2, "-p", "Is Paris in France?", "--chat", "--grammar", str(gbnf), "-t", "1",
                     "--no-stats"]) == 0
    assert capsys.readouterr().out.strip() in ("yes", "no")
    bad = tmp_path / "b.json"
    bad.write_text('{"type": "strin"}')
    assert cli.main(["run", smollm2, "-p", "x", "--json-schema", str(bad), "-t", "1"]) != 0
    assert "strin" in capsys.readouterr().err
    assert cli.main(["run", smollm2, "-p", "x", "--regex", "[0-9]+", "--choice", "a", "-t", "1"]) != 0
    assert "one constraint" in capsys.readouterr().err


def test_llama_cpp_schema_defaults():
    """No additionalProperties: no other keys; an unbounded integer: 16 digits at most. The
    maps of names (properties, $defs) and the data keywords (enum) are not schemas; allOf
    branches and objects with $ref keep their meaning."""
    schema = {"type": "object", "properties": {
        "properties": {"type": "object", "properties": {"a": {"type": "integer"}}},
        "n": {"type": "integer", "minimum": 0}, "open": {"type": "object", "properties": {},
                                                         "additionalProperties": True}},
        "allOf": [{"properties": {"x": {}}}],
        "$defs": {"D": {"type": "object", "properties": {"q": {"enum": [{"properties": 1}]}}}}}
    got = constrain.llama_cpp_defaults(schema)
    assert "additionalProperties" not in got and "additionalProperties" not in got["allOf"][0]
    inner = got["properties"]["properties"]
    assert inner["additionalProperties"] is False
    assert inner["properties"]["a"] == {"type": "integer", "minimum": -(10 ** 16 - 1), "maximum": 10 ** 16 - 1}
    assert got["properties"]["n"] == {"type": "integer", "minimum": 0}
    assert got["properties"]["open"]["additionalProperties"] is True
    assert got["$defs"]["D"]["additionalProperties"] is False
    assert got["$defs"]["D"]["properties"]["q"] == {"enum": [{"properties": 1}]}
    assert "additionalProperties" not in schema["properties"]["properties"]        # a copy
    # a required key the object does not declare stays possible (a JSONSchemaBench schema had one)
    loose = constrain.llama_cpp_defaults({"type": "object", "properties": {"a": {}}, "required": ["gid"]})
    assert "additionalProperties" not in loose


def test_unbounded_integers_end(spm):
    s = guanaco_rt.Session(spm, n_ctx=256, n_threads=1, seed=3)
    for _ in range(3):
        r = s.generate("n =", json_schema={"type": "integer"}, temperature=1.5, max_new_tokens=60)
        assert r.finish_reason in ("stop", "eos") and 1 <= len(r.text.strip().lstrip("-")) <= 16


def test_llama_cpp_style_json_object_schema(demo):
    """llama-cpp-python's response_format {"type": "json_object", "schema": ...} is honoured."""
    from guanaco_rt import LLM
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    with LLM(demo, n_ctx=256, n_threads=1) as llm:
        r = llm.create_chat_completion([{"role": "user", "content": "A city in Japan, as JSON."}], temperature=0,
                                       max_tokens=40, response_format={"type": "json_object", "schema": schema})
    value = json.loads(r["choices"][0]["message"]["content"])
    assert list(value) == ["city"]
