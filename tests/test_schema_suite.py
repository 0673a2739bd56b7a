"""tests/data/schemas/suite.jsonl, the JSONSchemaBench sample the structured-output tests use:
every line parses, every schema is a valid JSON Schema of its dialect, and the file is what
its README describes (digest, counts by source and by feature)."""
import hashlib
import json
import os
import re
import sys
from collections import Counter

import jsonschema
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.path.join(HERE, "data", "schemas")
SUITE = os.path.join(DIR, "suite.jsonl")
README = os.path.join(DIR, "README.md")
TOOLS = os.path.join(HERE, "..", "tools")


@pytest.fixture(scope="module")
def rows():
    with open(SUITE, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "", "suite.jsonl must end with a newline"
    out = []
    for n, line in enumerate(lines[:-1], 1):
        row = json.loads(line)
        assert isinstance(row, dict) and sorted(row) == ["name", "schema", "source"], f"line {n}: {sorted(row)}"
        assert isinstance(row["schema"], dict), f"line {n}: the schema is a {type(row['schema']).__name__}"
        out.append(row)
    return out


@pytest.fixture(scope="module")
def readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def table(text, header):
    """The two-column markdown table under ``| header | schemas |`` -> {first cell: int}."""
    lines = text.split("\n")
    start = lines.index(f"| {header} | schemas |") + 2
    out = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        key, value = (c.strip() for c in line.strip("|").split("|"))
        out[key] = int(value)
    return out


def features_fn():
    sys.path.insert(0, TOOLS)
    try:
        import make_schema_suite
    finally:
        sys.path.remove(TOOLS)
    return make_schema_suite.features


def test_every_schema_is_a_valid_json_schema_of_its_dialect(rows):
    for row in rows:
        schema = row["schema"]
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as e:
            pytest.fail(f"{row['source']}/{row['name']}: {e.message}")


def test_names_are_unique_and_small(rows):
    keys = [(r["source"], r["name"]) for r in rows]
    assert len(set(keys)) == len(keys)
    for r in rows:
        assert len(json.dumps(r["schema"], separators=(",", ":"), ensure_ascii=False).encode()) < 8192, r["name"]


def test_file_is_the_one_the_readme_describes(readme):
    digest = re.search(r"sha256 of suite.jsonl: `([0-9a-f]{64})`", readme).group(1)
    with open(SUITE, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest


def test_counts_by_source_are_the_readmes(rows, readme):
    want = table(readme, "source")
    total = want.pop("total")
    assert len(rows) == total >= 50
    assert Counter(r["source"] for r in rows) == want


def test_counts_by_feature_are_the_readmes(rows, readme):
    features = features_fn()
    want = table(readme, "feature")
    got = Counter(f for r in rows for f in features(r["schema"]))
    assert {k: got[k] for k in want} == want
    # what the issue asks the suite to cover, each by several schemas
    for k in ("required+optional", "enum", "array-bounds", "nested-object", "anyOf", "format", "pattern",
              "format:date", "format:email", "format:uuid"):
        assert want[k] >= 2, k


def test_features_reads_schema_positions_only():
    # a property *named* "enum" or "anyOf" is data, not the keyword; nested schemas count
    features = features_fn()
    schema = {"type": "object", "required": ["enum"],
              "properties": {"enum": {"type": "string"}, "anyOf": {"type": "object", "properties": {
                  "when": {"type": "string", "format": "date"}}}}}
    assert features(schema) == {"required+optional", "nested-object", "format", "format:date"}
