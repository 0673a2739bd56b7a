"""The budget close of constrained generation (constrain.Guide.steer): a text that would
run into max_new_tokens is steered to a complete, valid document; one that cannot be
completed in the tokens given still ends with finish_reason "length" and no parsed value."""
import json

import jsonschema
import pytest

import guanaco_rt
from guanaco_rt import constrain

# JSONSchemaBench's o64855: the demo model loops on digits inside "builder" ("B123456789012...")
LOOPER = {"properties": {"builders": {"items": {"properties": {"builder": {"pattern": ".*:.*", "type": "string"},
                                                               "options": {"type": "object"}},
                                                "required": ["builder"], "type": "object"},
                                      "minItems": 1, "type": "array"}}, "type": "object"}
PROMPT = "Write an example JSON document: All input types of builders that perform operations on sub-builders."


@pytest.fixture(scope="module")
def session(smollm2):
    m = guanaco_rt.Model(smollm2, n_threads=2)
    s = guanaco_rt.Session(m, n_ctx=1024)
    yield s
    s.close()
    m.close()


def valid(schema, text):
    jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())
    return True


@pytest.mark.parametrize("max_new", [40, 80])
def test_a_looping_text_closes_in_the_budget(session, max_new):
    session.reset()
    r = session.chat(PROMPT, max_new, json_schema=LOOPER, temperature=0)
    res = r.result
    assert res.finish_reason == "stop" and len(res.tokens) <= max_new
    assert valid(LOOPER, res.text) and r.parsed == json.loads(res.text)
    assert res.close_steps > 0                 # the model alone would have gone on with digits


def test_sampled_closes_too(session):
    for seed in range(3):
        session.reset()
        session.sampler.set_state(guanaco_rt.sampling.Sampler(seed).state)
        r = session.chat(PROMPT, 50, json_schema=LOOPER, temperature=0.8)
        assert r.result.finish_reason == "stop" and valid(LOOPER, r.result.text)


def test_what_cannot_close_in_time_says_length(session):
    schema = {"type": "array", "items": {"type": "string", "minLength": 5}, "minItems": 20}
    r = session.generate("A list:", 15, json_schema=schema, temperature=0)
    assert r.finish_reason == "length" and r.parsed is None and len(r.tokens) == 15


def test_completed_by_the_last_token_is_a_stop(session):
    # the one token "7" completes the constraint at max_new_tokens: the generation ended
    # because the constraint did, and its value is there
    r = session.generate("The number seven:", 1, json_schema={"const": 7}, temperature=0)
    assert r.tokens and r.finish_reason == "stop" and r.parsed == 7


def test_shortest_completion_leaves_the_matcher_as_it_was(session):
    schema = {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                               "doc": {"type": "string", "pattern": "^.*\\.md$"},
                                               "when": {"type": "string", "format": "date-time"},
                                               "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2}},
              "required": ["zip", "doc", "when", "tags"]}
    c, _ = constrain.compile_constraint(session.model, json_schema=schema)
    g = c.guide()
    for t in session.model.tokenize('{"zip": "12', bos=False):
        g.consume(t)
    before = g.matcher.compute_bitmask()
    ids = g.shortest_completion(1000)
    assert g.matcher.compute_bitmask() == before
    text = '{"zip": "12' + session.model.detokenize([t for t in ids if t not in c.vocab.eog])
    assert valid(schema, text)
    assert g.matcher.consume_tokens(ids) and g.matcher.is_accepting()


def test_literal_runs():
    assert constrain.literal_runs(r"^.*\.md$") == [b".md"]
    assert constrain.literal_runs(r"^IGF[a-zA-Z0-9-_]+$") == [b"IGF"]
    assert constrain.literal_runs(r"^https?://[^ ]+$") == [b"http", b"://"]
    assert constrain.literal_runs("ab+c") == [b"a", b"c"]
