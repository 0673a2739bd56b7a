"""Build tests/data/schemas/suite.jsonl: a deterministic sample of JSONSchemaBench's
real-world JSON schemas, for the structured-output validity tests and the engine benchmark.

    git clone https://github.com/guidance-ai/jsonschemabench /tmp/jsb   # or a bare mirror of it
    PYTHONPATH=. python tools/make_schema_suite.py /tmp/jsb

The source is read with git (``git ls-tree`` / ``git cat-file`` at HEAD), so a bare mirror
works as well as a clone. The rule, in order (tests/data/schemas/README.md repeats it):

1. Subsets Github_easy, Github_medium, Kubernetes, Snowplow, Glaiveai2K; each file's key is
   sha256("<subset>/<file name>"), and files are visited in key order.
2. A file is a candidate when it parses as a JSON object, is under MAX_BYTES as compact JSON,
   passes ``jsonschema.validators.validator_for(schema).check_schema``, has no ``$ref`` that
   leaves the document, and llguidance compiles it on the demo model's vocabulary (SmolLM2,
   49152 tokens) with no error and no warning.
3. The first PER_SUBSET candidates of each subset are taken.
4. Then, for each feature of FEATURES in turn, while fewer than MIN_PER_FEATURE suite schemas
   have it, the next candidate (all subsets merged, in key order) that has it is added; then
   the same for the string formats of FORMATS, MIN_PER_FORMAT each.

Everything dropped is counted by reason and printed, with the make-up by feature.
"""
import argparse
import hashlib
import json
import mmap
import os
import subprocess
import sys
from collections import Counter

SUBSETS = ("Github_easy", "Github_medium", "Kubernetes", "Snowplow", "Glaiveai2K")
PER_SUBSET = 12
MIN_PER_FEATURE = 8
MIN_PER_FORMAT = 2
MAX_BYTES = 8192
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "schemas", "suite.jsonl")

# keywords whose value is a schema, a list of schemas, or a map of name -> schema
ONE = ("items", "additionalProperties", "additionalItems", "not", "if", "then", "else", "contains",
       "propertyNames", "unevaluatedProperties", "unevaluatedItems")
MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def subschemas(node):
    """The schemas directly inside one schema node (not inside enum/const/default data)."""
    for k in ONE:
        v = node.get(k)
        if isinstance(v, dict):
            yield v
        elif k == "items" and isinstance(v, list):       # draft-04 tuple items
            yield from (s for s in v if isinstance(s, dict))
    for k in MANY:
        v = node.get(k)
        if isinstance(v, list):
            yield from (s for s in v if isinstance(s, dict))
    for k in MAP:
        v = node.get(k)
        if isinstance(v, dict):
            yield from (s for s in v.values() if isinstance(s, dict))


def is_object(node):
    return node.get("type") == "object" or (isinstance(node.get("type"), list) and "object" in node["type"]) \
        or "properties" in node


def features(schema):
    """The features the issue asks the suite to cover, found in any node of ``schema`` -> set of names:
    required+optional (an object with properties, some of them not required), enum, array-bounds
    (minItems or maxItems), nested-object (an object property that is itself an object), anyOf,
    format, pattern; plus the other keywords seen (oneOf, allOf, $ref, const, ...) by name."""
    found = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        for k in node:
            if k in ("enum", "anyOf", "oneOf", "allOf", "$ref", "const", "pattern", "format", "minItems", "maxItems",
                     "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                     "patternProperties", "additionalProperties", "not", "if", "uniqueItems", "multipleOf",
                     "minProperties", "maxProperties", "prefixItems", "default"):
                found.add(k)
        props = node.get("properties")
        if isinstance(props, dict) and props:
            req = node.get("required") if isinstance(node.get("required"), list) else []
            if req and any(p not in req for p in props):
                found.add("required+optional")
            if any(isinstance(s, dict) and is_object(s) for s in props.values()):
                found.add("nested-object")
        if "minItems" in node or "maxItems" in node:
            found.add("array-bounds")
        if isinstance(node.get("format"), str):
            found.add("format:" + node["format"])
        stack.extend(subschemas(node))
    return found


# the features the issue names, in the order the quotas are filled, and the string formats
FEATURES = ("required+optional", "enum", "array-bounds", "nested-object", "anyOf", "format", "pattern")
FORMATS = ("format:date", "format:email", "format:uuid", "format:uri")


def has_remote_ref(schema):
    text = json.dumps(schema)
    refs = []
    i = text.find('"$ref": "')
    while i >= 0:
        j = text.find('"', i + 9)
        refs.append(text[i + 9:j])
        i = text.find('"$ref": "', j)
    return any(not r.startswith("#") for r in refs)


def read_subset(repo, subset):
    """-> [(name, bytes)] of the subset's files at HEAD, through one git cat-file process."""
    ls = subprocess.run(["git", "--git-dir", repo, "ls-tree", "HEAD", f"data/{subset}/"], capture_output=True,
                        check=True, text=True).stdout.split("\n")
    entries = [(line.split("\t")[1], line.split()[2]) for line in ls if line.strip()]
    blobs = subprocess.run(["git", "--git-dir", repo, "cat-file", "--batch"], capture_output=True, check=True,
                           input="".join(sha + "\n" for _, sha in entries).encode()).stdout
    out, pos = [], 0
    for path, _ in entries:
        end = blobs.index(b"\n", pos)
        size = int(blobs[pos:end].split()[2])
        out.append((os.path.basename(path), blobs[end + 1:end + 1 + size]))
        pos = end + 1 + size + 1
    return out


def lltokenizer(spellings, types, token_bytes, eog, bos, encode):
    """llguidance.LLTokenizer over one of our vocabularies: special tokens (CONTROL ones, and
    USER_DEFINED ones spelled <...>) as b"\\xff" + their spelling, the way llguidance's
    llamacpp.py gives them, the others as their bytes; every EOG id is an EOS. ``encode`` (str ->
    ids) must give tokens whose bytes are exactly the text: no SentencePiece dummy-prefix space,
    or llguidance forces " {" where the grammar says "{"."""
    import llguidance
    special = [i for i, (t, ty) in enumerate(zip(spellings, types))
               if ty == 3 or (ty == 4 and t.startswith("<") and t.endswith(">"))]

    class Wrapper:       # the attributes llguidance.TokenizerWrapper carries
        eos_token_id, bos_token_id = eog[0], bos
        tokens = list(token_bytes)
        for i in special:
            tokens[i] = b"\xff" + spellings[i].encode()
        special_token_ids = special
        is_tokenizer_wrapper = True

        def __call__(self, s):
            return encode(s.decode("utf-8", "replace") if isinstance(s, bytes) else s)

    return llguidance.LLTokenizer(Wrapper(), eos_token=list(eog))


def demo_lltokenizer(path=None):
    """llguidance's tokenizer for the demo model's vocabulary (byte-level BPE: no dummy prefix)."""
    from guanaco_rt import gguf_file, gguf_model
    from guanaco_rt.demo import demo_model_path
    from guanaco_rt.model import _gguf_tokenizer
    path = path or demo_model_path(fetch=False)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    g = gguf_file.parse(path, mm)
    vocab = gguf_model._vocab(g, len(g.metadata["tokenizer.ggml.tokens"]))
    tok = _gguf_tokenizer(vocab, path)
    return lltokenizer(vocab["tokens"], vocab["types"], [tok.token_bytes(i) for i in range(tok.n_vocab)],
                       vocab["eog"], vocab["bos"], lambda s: tok.encode(s, bos=False))


def llguidance_problem(lltok, schema):
    """'' when llguidance compiles the schema cleanly, else its error or warnings."""
    import llguidance
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    except ValueError as e:
        return f"error: {e}"
    is_error, msgs = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, lltok)
    if is_error:
        return f"error: {msgs[0] if msgs else '?'}"
    if msgs:
        return f"warning: {msgs[0]}"
    m = llguidance.LLMatcher(lltok, grammar, log_level=0)
    return f"error: {m.get_error()}" if m.is_error() else ""


def candidate_problem(schema, raw_len, lltok):
    import jsonschema
    if not isinstance(schema, dict):
        return "not a JSON object"
    if raw_len >= MAX_BYTES:
        return f"over {MAX_BYTES} bytes"
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError:
        return "check_schema fails"
    if has_remote_ref(schema):
        return "$ref outside the document"
    problem = llguidance_problem(lltok, schema)
    return "llguidance " + problem if problem else ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", help="git directory (or clone) of github.com/guidance-ai/jsonschemabench")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    repo = args.repo if os.path.isfile(os.path.join(args.repo, "HEAD")) else os.path.join(args.repo, ".git")
    commit = subprocess.run(["git", "--git-dir", repo, "rev-parse", "HEAD"], capture_output=True, check=True,
                            text=True).stdout.strip()
    lltok = demo_lltokenizer()

    pool = []                      # (key, subset, name, schema-or-None, raw_len)
    for subset in SUBSETS:
        for name, raw in read_subset(repo, subset):
            try:
                schema = json.loads(raw)
            except ValueError:
                schema = None
            compact = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode()) if schema else 0
            pool.append((hashlib.sha256(f"{subset}/{name}".encode()).hexdigest(), subset, name, schema, compact))
    pool.sort()

    dropped, checked = Counter(), {}

    def ok(entry):
        key, subset, name, schema, n = entry
        if key not in checked:
            why = "not JSON" if schema is None else candidate_problem(schema, n, lltok)
            checked[key] = why
            if why:
                dropped[why] += 1
        return not checked[key]

    suite, taken = [], set()
    for subset in SUBSETS:
        n = 0
        for entry in pool:
            if entry[1] == subset and n < PER_SUBSET and ok(entry):
                suite.append(entry)
                taken.add(entry[0])
                n += 1
    for feat, least in [(f, MIN_PER_FEATURE) for f in FEATURES] + [(f, MIN_PER_FORMAT) for f in FORMATS]:
        for entry in pool:
            if sum(feat in features(e[3]) for e in suite) >= least:
                break
            if entry[0] not in taken and entry[3] is not None and isinstance(entry[3], dict) \
                    and feat in features(entry[3]) and ok(entry):
                suite.append(entry)
                taken.add(entry[0])

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for _, subset, name, schema, _ in suite:
            f.write(json.dumps({"source": f"JSONSchemaBench/{subset}", "name": name, "schema": schema},
                               ensure_ascii=False, sort_keys=False) + "\n")
    print(f"jsonschemabench commit {commit}: {len(suite)} schemas -> {args.out}")
    print(f"visited {len(checked)} files, dropped {sum(dropped.values())}:")
    for why, n in Counter(w.split(":")[0] for w in dropped.elements()).most_common():
        print(f"  {n:4d}  {why}")
    for why in sorted(w for w in dropped if w.startswith("llguidance")):
        print(f"        {why[:160]}")
    print("by source:", dict(Counter(e[1] for e in suite)))
    counts = Counter(f for e in suite for f in features(e[3]))
    print("by feature:", {f: counts[f] for f in FEATURES})
    print("formats:", dict(sorted((k, v) for k, v in counts.items() if k.startswith("format:"))))
    print("other keywords:", dict(sorted((k, v) for k, v in counts.items()
                                         if k not in FEATURES and not k.startswith("format:"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
