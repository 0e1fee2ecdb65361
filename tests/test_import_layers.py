"""Layers point one way: the import graph of ``lift`` and ``vla_rl_lib``, read with ``ast``.

Every import counts, at module level or inside a function (a lazy import is
still a dependency); imports under ``if TYPE_CHECKING:`` count for the layer
rules but not for cycles, since they never run.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lift", "vla_rl_lib")

# (importer prefix, imported prefix, why not)
FORBIDDEN = (
    ("vla_rl_lib.algorithms", "lift", "algorithms are pure functions of tensors"),
    ("vla_rl_lib.algorithms", "vla_rl_lib.config", "algorithms take PPOSettings, not the run config"),
    ("vla_rl_lib.rollout", "vla_rl_lib.training", "rollout sits below training"),
    ("lift", "vla_rl_lib", "the simulator knows nothing of the VLA library"),
)
# Edges that break a rule today, each waiting on named work. An entry whose edge is gone
# fails the test, so the allowance is deleted as soon as it is no longer needed.
KNOWN: dict[tuple[str, str], str] = {}


def package_dir(package: str) -> Path:
    """Where a package's source lives: ``lift`` is its own distribution under ``sim/``."""
    inside_sim = ROOT / "sim" / package
    return inside_sim if inside_sim.is_dir() else ROOT / package


def module_name(path: Path, base: Path) -> str:
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {
        module_name(path, package_dir(package).parent): path
        for package in PACKAGES
        for path in sorted(package_dir(package).rglob("*.py"))
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(
    node: ast.Import | ast.ImportFrom, importer: str, path: Path, modules: dict[str, Path]
) -> list[str]:
    """Modules the statement imports: ``from a import b`` is ``a.b`` when that is a module, else ``a``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    base = ".".join(p for p in (package if node.level else "", node.module or "") if p)
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(runtime edges, type-only edges) between the modules of ``PACKAGES``."""
    modules = source_modules()
    runtime: dict[str, set[str]] = {name: set() for name in modules}
    type_only: dict[str, set[str]] = {name: set() for name in modules}

    for importer, path in modules.items():

        def visit(node: ast.AST, typing_only: bool, importer: str = importer, path: Path = path):
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                for child in node.body:
                    visit(child, True)
                for child in node.orelse:
                    visit(child, typing_only)
                return
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in _imported(node, importer, path, modules):
                    if name in modules and name != importer:
                        (type_only if typing_only else runtime)[importer].add(name)
            for child in ast.iter_child_nodes(node):
                visit(child, typing_only)

        visit(ast.parse(path.read_text(), str(path)), False)
    return runtime, type_only


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def forbidden_edges(edges: dict[str, set[str]]) -> list[tuple[str, str, str]]:
    return [
        (importer, imported, why)
        for importer, targets in sorted(edges.items())
        for imported in sorted(targets)
        for low, high, why in FORBIDDEN
        if _under(importer, low) and _under(imported, high)
    ]


def test_the_graph_reader_sees_lazy_relative_and_type_only_imports(tmp_path, monkeypatch):
    package = tmp_path / "lift"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from lift.sub import leaf\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .. import other\n"
        "def f():\n    from . import deep\n"
    )
    (package / "sub" / "deep.py").write_text("import lift\n")
    (package / "other.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("lift",))

    runtime, type_only = import_graph()
    assert runtime["lift"] == {"lift.sub.leaf"}
    assert runtime["lift.sub.leaf"] == {"lift.sub.deep"}
    assert type_only["lift.sub.leaf"] == {"lift.other"}
    assert find_cycle(runtime) == ["lift", "lift.sub.leaf", "lift.sub.deep", "lift"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    runtime, _ = import_graph()
    for importer, imported in KNOWN:  # each breaks a layer rule already; judged there
        runtime[importer].discard(imported)
    cycle = find_cycle(runtime)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_point_one_way():
    runtime, type_only = import_graph()
    edges = {name: runtime[name] | type_only[name] for name in runtime}
    found = forbidden_edges(edges)
    broken = [
        f"{importer} imports {imported} ({why})"
        for importer, imported, why in found
        if (importer, imported) not in KNOWN
    ]
    assert not broken, "\n".join(broken)
    stale = set(KNOWN) - {(importer, imported) for importer, imported, _ in found}
    assert not stale, f"these edges are gone: delete them from KNOWN: {sorted(stale)}"


def test_lift_source_never_names_vla_rl_lib():
    named = [
        str(path.relative_to(ROOT))
        for path in sorted(package_dir("lift").rglob("*.py"))
        if "vla_rl_lib" in path.read_text()
    ]
    assert not named, f"lift must not mention vla_rl_lib: {named}"


def _modules_after(statement: str, block: tuple[str, ...] = ()) -> set[str]:
    """Top-level packages in sys.modules after ``statement`` in a fresh interpreter.

    Packages in ``block`` cannot be imported there, as if they were not installed.
    """
    code = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({block!r}))\n"  # None there: import raises, find_spec is None
        f"{statement}\n"
        "print(' '.join(sorted({m.partition('.')[0] for m, v in sys.modules.items() if v})))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT / "sim"), str(ROOT)))}
    env.pop("MUJOCO_GL", None)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_algorithms_import_neither_the_simulator_nor_the_run_config():
    loaded = _modules_after("import vla_rl_lib.algorithms")
    assert "torch" in loaded  # the check sees real imports
    assert not loaded & {"lift", "mujoco", "gymnasium"}


def test_run_config_imports_without_gymnasium():
    loaded = _modules_after("import vla_rl_lib.config", block=("gymnasium",))
    assert "lift" in loaded and "gymnasium" not in loaded


@pytest.mark.parametrize(
    ("statement", "mujoco_gl"),
    [
        ("import lift", None),  # registration only: the environment is left alone
        ("import lift.backends.mujoco_env", "egl"),  # set before MuJoCo reads it
        ("import lift.expert", "egl"),  # the expert imports the backend before mujoco
    ],
)
def test_mujoco_gl_defaults_to_egl_where_mujoco_loads(statement, mujoco_gl):
    code = f"{statement}\nimport os\nprint(os.environ.get('MUJOCO_GL'))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT / "sim"), str(ROOT)))}
    env.pop("MUJOCO_GL", None)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == str(mujoco_gl)


def test_gymnasium_ids_registered_by_importing_lift():
    loaded = _modules_after(
        "import lift, gymnasium\nassert lift.GYM_ID in gymnasium.registry, 'not registered'"
    )
    assert "gymnasium" in loaded
