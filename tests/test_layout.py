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
