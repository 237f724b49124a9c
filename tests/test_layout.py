"""Issue 13's house rules that a file listing can check: no module of the project over 400 lines."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("advisor", "models", "measurement", "profiles")
MAX_LINES = 400


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by what they hold): {long}"


# Issue 13: method facts live in profiles/data/methods.yaml; code outside the catalog package (profiles/: the
# catalog and its loaders) reads them from there and never names a method by its id. Counted on the syntax
# tree: string constants equal to a method id, docstrings (usage examples) excepted. 405 such literals in 42
# modules when the count began (2026-12-01); none now.
CATALOG_PACKAGE = "profiles"


def _docstrings(tree) -> set[int]:
    import ast

    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body:
            b = n.body[0]
            if isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
                out.add(id(b.value))
    return out


def _id_literals(ids: set[str], packages=PACKAGES, root: Path = ROOT) -> dict[str, int]:
    """Per module, the string constants (docstrings excepted) that equal one of ``ids``."""
    import ast

    out: dict[str, int] = {}
    for pkg in packages:
        for p in (root / pkg).rglob("*.py"):
            tree = ast.parse(p.read_text())
            docs = _docstrings(tree)
            n = sum(1 for x in ast.walk(tree) if isinstance(x, ast.Constant) and isinstance(x.value, str)
                    and x.value in ids and id(x) not in docs)
            if n:
                out[str(p.relative_to(root))] = n
    return out


def test_method_ids_are_never_written_into_code_outside_the_catalog():
    from profiles import load
    found = _id_literals(set(load().methods), [p for p in PACKAGES if p != CATALOG_PACKAGE])
    assert not found, ("method ids written into code; read the fact from profiles/data/methods.yaml through the "
                       f"catalog instead: {found}")


def test_the_literal_count_sees_a_literal(tmp_path):
    """The counter finds a quoted id in code, and skips one in a docstring."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text('"""Example: f("fp8")."""\nX = {"fp8": 1}\ndef f(p="bf16"):\n    return p\n')
    assert _id_literals({"fp8", "bf16"}, ["pkg"], tmp_path) == {"pkg/m.py": 2}


# Issue 13: engine facts live in profiles/data/engines.yaml (cost-model constants, launch rules, the default and
# the harness engine, backends of the peer predictors); code outside profiles/ reads them through the catalog
# (cat.engines[id], Catalog.default_engine / harness_engine) and never names an engine by its id. 68 such literals
# in 24 modules when the count began (2026-12-01). What is left is a package's name that equals an engine id,
# each module listed here with its count and why; anything else fails.
ENGINE_ID_PACKAGE_NAMES = {  # module: (literals, what the string names)
    "measurement/env.py": (2, "the transformers distribution: importlib.metadata version, under its own name"),
    "measurement/runner.py": (1, "the run's provenance column holding the transformers package version"),
    "measurement/dataset.py": (2, "the dataset's column holding the transformers package version"),
    "measurement/quality/rows.py": (2, "the quality rows' column holding the transformers package version"),
    "measurement/quality/campaign.py": (3, "the transformers package version in the campaign's provenance"),
    "measurement/llamacpp/build.py": (1, "vendor/llama.cpp: the source directory inside the llama-cpp-python sdist"),
}


def _beyond_allowed(found: dict[str, int], allowed: dict[str, tuple]) -> dict[str, str]:
    """Modules whose literal count differs from the allow-list's (a new literal, or a listed one gone)."""
    return {m: f"{found.get(m, 0)} literals, {allowed[m][0] if m in allowed else 0} allowed"
            for m in set(found) | set(allowed) if found.get(m, 0) != (allowed[m][0] if m in allowed else 0)}


def test_engine_ids_are_never_written_into_code_outside_the_catalog():
    from profiles import load
    found = _id_literals(set(load().engines), [p for p in PACKAGES if p != CATALOG_PACKAGE])
    bad = _beyond_allowed(found, ENGINE_ID_PACKAGE_NAMES)
    assert not bad, ("engine ids written into code; read the fact from profiles/data/engines.yaml through the "
                     f"catalog instead (or, for a package's name, list the module in ENGINE_ID_PACKAGE_NAMES): {bad}")


def test_the_engine_allow_list_check_sees_a_new_literal():
    """A module off the list, or a listed module with one literal more (or fewer), is reported."""
    allowed = {"pkg/env.py": (1, "a package name")}
    assert _beyond_allowed({"pkg/env.py": 1}, allowed) == {}
    assert set(_beyond_allowed({"pkg/env.py": 1, "pkg/speed.py": 1}, allowed)) == {"pkg/speed.py"}
    assert set(_beyond_allowed({"pkg/env.py": 2}, allowed)) == {"pkg/env.py"}
    assert set(_beyond_allowed({}, allowed)) == {"pkg/env.py"}
