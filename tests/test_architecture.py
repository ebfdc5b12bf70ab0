"""The layout rules a newcomer relies on, checked on the source itself (with ``ast``):

* no module imports a private (``_name``) name of another module of the project, nor
  reads one as an attribute of an imported project module;
* data flows one way: stage 2 (``temporal``) never imports stage 1 (``extract``) nor the
  package that applies runs (``apply``); ``cache_schema``, the contract, imports neither
  stage; ``extract`` does not import ``temporal`` or ``apply``;
* every package names its public API in ``__init__.__all__``, and every name there exists.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cache_schema", "extract", "temporal", "synth", "apply", "live")
TOP_MODULES = ("cli",)


def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    files += [ROOT / f"{m}.py" for m in TOP_MODULES]
    files += sorted((ROOT / "tests").glob("*.py"))
    return files


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PACKAGES + TOP_MODULES + ("tests",)


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, imported name or None) of every import of a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(path, node)
            out += [(node.lineno, module, alias.name) for alias in node.names]
    return out


def test_no_module_imports_a_private_name_of_another_module() -> None:
    bad = []
    for path in _sources():
        own = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        module_aliases: dict[str, str] = {}
        for line, module, name in _imports(path):
            if not _is_project(module) or module == own:
                continue
            if any(_is_private(part) for part in module.split(".")):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports private module {module}")
            if name is not None and _is_private(name):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} from {module}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _is_project(alias.name):
                        module_aliases[alias.asname or alias.name.split(".")[0]] = alias.name
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    full = f"{_resolve(path, node)}.{alias.name}"
                    if _is_project(full) and (ROOT / Path(*full.split("."))).with_suffix(".py").exists():
                        module_aliases[alias.asname or alias.name] = full
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _is_private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and module_aliases[node.value.id] != own):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


# (importer package, packages it must never import)
FORBIDDEN = {
    "cache_schema": ("extract", "temporal", "apply", "synth"),
    "temporal": ("extract", "apply", "synth"),
    "extract": ("temporal", "apply"),
    "synth": ("extract", "temporal", "apply"),
}


def test_data_flows_one_way() -> None:
    bad = []
    for path in _sources():
        top = _module_name(path).split(".")[0]
        for line, module, _ in _imports(path):
            if module.split(".")[0] in FORBIDDEN.get(top, ()):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", PACKAGES + ("temporal.heads",))
def test_every_package_names_its_public_api(package: str) -> None:
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None)
    assert names, f"{package}/__init__.py has no __all__"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"
    assert not [n for n in names if _is_private(n)], f"{package}.__all__ exports private names"


def test_the_checks_see_a_private_import(tmp_path: Path) -> None:
    """The import scan is not vacuous: it sees a planted private import, multi-line too."""
    planted = tmp_path / "planted.py"
    planted.write_text("from extract.decode import (\n    decode_clip,\n    _secret,\n)\n")
    found = [(m, n) for _, m, n in _imports(planted)]
    assert ("extract.decode", "_secret") in found and _is_private("_secret") and not _is_private("__all__")


def test_cli_choices_are_the_librarys() -> None:
    """cli.py spells a few choices out so that ``--help`` imports nothing heavy; they must
    be exactly the library's own lists."""
    import cli
    from extract.backbones import BACKBONE_PRESETS
    from extract.datasets import DATASET_NAMES
    from temporal.heads import TABLE_HEADS

    def option(command: str, name: str):
        return next(p for p in cli.main.commands[command].params if p.name == name)

    assert tuple(option("extract", "dataset").type.choices) == DATASET_NAMES
    assert sorted(option("extract", "backbones").type.choices) == sorted(BACKBONE_PRESETS)
    assert tuple(option("compare", "heads").default.split(",")) == TABLE_HEADS
    from temporal.train_config import TrainConfig

    assert option("train", "std_floor").default == option("compare", "std_floor").default == TrainConfig().std_floor


def test_the_datasets_package_has_no_import_circle() -> None:
    """``extract.datasets``: the manifest types are at the bottom and each layout builds on
    them, so the graph of imports between its modules (those inside functions too) has no
    cycle; before the package, ``labelled`` <-> ``manifest`` <-> ``xd_violence`` formed one."""
    package = ROOT / "extract" / "datasets"
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        own = _module_name(path)
        graph[own] = {m for _, m, _ in _imports(path) if m.startswith("extract.datasets.") and m != own}
        graph[own] |= {f"{m}.{n}" for _, m, n in _imports(path) if m == "extract.datasets" and n
                       and (package / f"{n}.py").exists()}
    assert "extract.datasets.manifest" in graph and not graph["extract.datasets.manifest"] - {
        "extract.datasets.names"}, "the manifest types must be the bottom of the package"
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 1:
            raise AssertionError("import circle: " + " -> ".join([*trail, node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt != "extract.datasets":   # the package's face imports everything; modules never import it
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if not node.endswith("__init__") and node != "extract.datasets":
            visit(node, [])
