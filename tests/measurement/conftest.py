import pytest

# The harness tests need torch and transformers; the llama.cpp and dataset tests do not, so only the
# former are left out where those are missing.
try:
    import torch
    import transformers  # noqa: F401
except ImportError:
    torch = None
    collect_ignore = ["test_apply.py", "test_decode_graph.py", "test_gpu.py", "test_harness.py",
                      "test_quality_campaign.py"]


def tiny_config(*a, **k):
    from measurement.testing import tiny_config as t

    return t(*a, **k)


@pytest.fixture
def tiny_cfg():
    return tiny_config()


@pytest.fixture
def tiny_model():
    from measurement.build import build_random

    return build_random(tiny_config(4), dtype=torch.float32, device="cpu", std=0.2)


@pytest.fixture
def fixed_commit(monkeypatch):
    """Provenance with a fixed git commit ("test-commit", no git call); its caches cleared around the test."""
    from measurement import env

    monkeypatch.setenv("ADVISOR_GIT_COMMIT", "test-commit")
    env.provenance.cache_clear()
    env.git_commit.cache_clear()
    yield
    env.provenance.cache_clear()
    env.git_commit.cache_clear()
