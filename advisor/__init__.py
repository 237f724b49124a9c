"""advisor: how to run LLM X on GPU Y with engine Z, how many GPUs, which GPU to buy.

Python API (:mod:`advisor.api`): ``advisor.predict(model=, gpu=, engine="vllm", precision=, ...)`` -> dict,
``advisor.engines()``, ``advisor.gpus()``, ``advisor.models()``, ``advisor.methods(engine=None)``,
``advisor.gpu_info(id)``; decisions: :func:`advisor.engine.recommend` with an :class:`advisor.engine.Request`.
"""
__version__ = "0.1.0"

from .api import engines, gpu_info, gpus, methods, models, predict  # noqa: E402

__all__ = ["predict", "engines", "gpus", "models", "methods", "gpu_info"]
