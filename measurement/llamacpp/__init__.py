"""llama.cpp measurements: build, run and parse llama-bench / llama-batched-bench on the device."""


def engine_id() -> str:
    """The catalog engine this package measures (engines.yaml: the one whose ``measured_by`` is this package)."""
    from profiles import load
    return next(e.id for e in load().engines.values() if e.get("measured_by") == __package__)
