"""The project's import graph (every import, module level or inside a function) has no cycles (issue 13)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("advisor", "models", "measurement", "profiles")


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    mods = {_module(p): p for p in files}
    g: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for n in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(n, ast.ImportFrom):
                if n.level:
                    base = pkg.split(".")
                    base = base[:len(base) - (n.level - 1)] if n.level > 1 else base
                    name = ".".join(base + ([n.module] if n.module else []))
                else:
                    name = n.module or ""
                targets = [name] + [f"{name}.{a.name}" for a in n.names]
            elif isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != m and not m.startswith(t + ".") and t != pkg:
                    g[m].add(t)
    return g


def test_no_import_cycles():
    g = graph()
    state, stack, cycles = {}, [], []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(g[u]):
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for u in sorted(g):
        if u not in state:
            visit(u)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles[:20])
