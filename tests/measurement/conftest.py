import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


from measurement.testing import tiny_config  # noqa: E402


@pytest.fixture
def tiny_cfg():
    return tiny_config()


@pytest.fixture
def tiny_model():
    from measurement.build import build_random

    return build_random(tiny_config(4), dtype=torch.float32, device="cpu", std=0.2)
