"""advisor: how to run LLM X on GPU Y, how many GPUs, which GPU to buy.

Python API: :func:`advisor.engine.recommend` with an :class:`advisor.engine.Request`.
"""
__version__ = "0.1.0"
