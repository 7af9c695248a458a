"""difflab's modules import only downward: an AST walk over every ``.py`` of ``src/difflab``.

Each module belongs to a layer (:data:`LAYERS`, bottom to top; docs/architecture.md explains
them). A module may import from its own layer and the layers below it, never from above. On top
of that, the imports between difflab's modules form no cycle (within a layer either), and no
module imports another module's private ``_name`` (nor reads ``module._name`` of a module it
imported), nor a private module (``samplers/_common.py``) from outside its package. Imports
inside functions count like any other — lazy imports are where circles hide — except those
under ``if TYPE_CHECKING:``, which never run.

To add a package or a top-level module, add its row to :data:`LAYERS`; a module whose first
name component is not there fails the test until it has one.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "difflab"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# The first component of a module's name below ``difflab`` -> its layer, bottom (0) to top.
# "__init__" stands for the package ``difflab`` itself (its public API).
LAYERS: dict[str, int] = {
    "errors": 0, "version": 0,
    # the post's maths: tensors in, tensors out
    "schedules": 1, "parameterization": 1, "losses": 1, "vlb": 1, "autoencoding": 1,
    "oracle": 1, "metrics": 1, "ncsn": 1,
    "contrastive": 1,  # CLIP's InfoNCE, slerp and text diffs of unCLIP (Weng eq. 34)
    "samplers": 2,
    "likelihood": 2,  # the probability-flow ODE's density on a sampler's time grid
    "guidance": 3,
    "nn": 4,
    "data": 5,
    "distill": 6,  # the maths of distillation: targets, losses, consistency models
    "pipelines": 6,  # compositions of networks: latent (autoencoder ∘ denoiser)
    "config": 7,
    "build": 8,  # config -> objects: schedule, network, data, conditioning
    "training": 9,  # the one loop, objectives, backend
    "runs": 10,  # run directories, checkpoints, loading, evaluation, pictures
    "interop": 10,  # to and from diffusers: weight maps, export of runs, load_diffusers
    "cli": 11,
    "__init__": 12, "__main__": 12,
}


@dataclass(frozen=True)
class Import:
    """One import of a difflab module by another: ``source`` imports ``target`` at ``line``."""

    source: str
    target: str
    line: int
    lazy: bool  # inside a function (runs when called, not when the module loads)

    def where(self) -> str:
        return f"{self.source}:{self.line}{' (lazy)' if self.lazy else ''}"


def module_name(relpath: str) -> tuple[str, bool]:
    """``samplers/ddim.py`` -> (``difflab.samplers.ddim``, False); ``samplers/__init__.py``
    -> (``difflab.samplers``, True): the module's name and whether it is a package."""
    parts = [PACKAGE, *Path(relpath).with_suffix("").parts]
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def layer_key(module: str) -> str:
    """The key of ``module`` in the layer table: its first name component below difflab."""
    rest = module.split(".")[1:]
    return rest[0] if rest else "__init__"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Walker(ast.NodeVisitor):
    """Collects a module's imports of difflab modules, private names imported, and
    ``alias._name`` reads of imported difflab modules."""

    def __init__(self, name: str, is_pkg: bool, modules: set[str]):
        self.name, self.modules = name, modules
        self.package = name if is_pkg else name.rpartition(".")[0]
        self.depth = 0  # > 0 inside a function
        self.imports: list[Import] = []
        self.private: list[str] = []
        self.missing: list[str] = []  # imports of difflab modules that do not exist
        self.aliases: dict[str, str] = {}  # local name -> difflab module it is bound to

    def _edge(self, target: str, node: ast.stmt) -> None:
        self.imports.append(Import(self.name, target, node.lineno, self.depth > 0))
        parts = target.split(".")
        for i, part in enumerate(parts):
            owner = ".".join(parts[:i])  # the package a private module belongs to
            if is_private(part) and not (self.name + ".").startswith(owner + "."):
                self.private.append(f"{self.where(node)} imports {target}, a private module "
                                    f"of {owner}")
                break

    def where(self, node: ast.stmt) -> str:
        return Import(self.name, "", node.lineno, self.depth > 0).where()

    def _owner(self, dotted: str) -> str | None:
        """The longest difflab module that ``dotted`` names or lies in (None: not difflab)."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.modules:
                return ".".join(parts[:n])
        return None

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.visit_FunctionDef(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            target = self._owner(alias.name)
            if target is None:
                continue
            if target != alias.name:
                self.missing.append(f"{self.where(node)} imports {alias.name}")
                continue
            self._edge(target, node)
            if alias.asname:  # import difflab.x.y as z: z is difflab.x.y
                self.aliases[alias.asname] = target

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            base_name = ".".join(base + ([node.module] if node.module else []))
        else:
            base_name = node.module or ""
        if self._owner(base_name) is None:
            return  # not difflab
        if base_name not in self.modules:
            self.missing.append(f"{self.where(node)} imports from {base_name}")
            return
        for alias in node.names:
            sub = f"{base_name}.{alias.name}"
            if sub in self.modules:  # from . import x: the module x
                self._edge(sub, node)
                self.aliases[alias.asname or alias.name] = sub
                continue
            self._edge(base_name, node)
            if is_private(alias.name) and base_name != self.name:
                self.private.append(f"{self.where(node)} imports {alias.name} from "
                                    f"{base_name}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if (isinstance(node.value, ast.Name) and node.value.id in self.aliases
                and is_private(node.attr)):
            self.private.append(f"{self.name}:{node.lineno} reads "
                                f"{self.aliases[node.value.id]}.{node.attr}")
        self.generic_visit(node)


@dataclass
class Found:
    """What :func:`collect` finds in a set of sources."""

    modules: set[str]
    imports: list[Import]  # every import of one difflab module by another
    private: list[str]  # private names taken from another module
    missing: list[str]  # imports of difflab modules that do not exist


def collect(sources: Mapping[str, str]) -> Found:
    """``sources``: path below ``src/difflab`` (``"samplers/ddim.py"``) -> source text."""
    named = {relpath: module_name(relpath) for relpath in sources}
    modules = {PACKAGE}
    for name, _ in named.values():  # each module and the packages above it (a folder without
        parts = name.split(".")  # an __init__.py is a namespace package)
        modules |= {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
    found = Found(modules, [], [], [])
    for relpath, text in sorted(sources.items()):
        name, is_pkg = named[relpath]
        walker = _Walker(name, is_pkg, found.modules)
        walker.visit(ast.parse(text, filename=relpath))
        found.imports += dict.fromkeys(walker.imports)  # `from m import a, b`: one import
        found.private += dict.fromkeys(walker.private)  # one line per import statement
        found.missing += dict.fromkeys(walker.missing)
    return found


def cycles(imports: list[Import]) -> list[list[Import]]:
    """One shortest cycle for each strongly connected set of modules (Tarjan), as the list of
    imports that close it; a module importing itself is a cycle of one."""
    graph: dict[str, dict[str, Import]] = {}
    for imp in imports:
        graph.setdefault(imp.source, {}).setdefault(imp.target, imp)
        graph.setdefault(imp.target, {})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:  # recursion depth ≤ the number of modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            components.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    found = []
    for comp in components:
        start = min(comp)
        if len(comp) == 1 and start not in graph[start]:
            continue
        # breadth-first from start back to start, inside the component
        prev: dict[str, Import] = {}
        frontier, seen, closing = [start], {start}, None
        while frontier and closing is None:
            nxt = []
            for v in frontier:
                for w, imp in sorted(graph[v].items()):
                    if w == start:
                        closing = imp
                        break
                    if w in comp and w not in seen:
                        seen.add(w)
                        prev[w] = imp
                        nxt.append(w)
                if closing is not None:
                    break
            frontier = nxt
        path = [closing]
        while path[-1].source != start:
            path.append(prev[path[-1].source])
        found.append(path[::-1])
    return found


def violations(sources: Mapping[str, str], layers: Mapping[str, int] = LAYERS) -> list[str]:
    """Every breach of the layering in ``sources`` (path below src/difflab -> text), one
    readable line each: upward imports, import cycles, private names across modules, and modules
    missing from ``layers``."""
    found = collect(sources)
    imports = found.imports
    out = []
    for key in sorted({layer_key(m) for m in found.modules} - set(layers)):
        out.append(f"not in the layer table: {PACKAGE}.{key} (add it to LAYERS)"
                   if key != "__init__" else f"not in the layer table: {PACKAGE}")
    for imp in sorted(imports, key=lambda i: (i.source, i.line, i.target)):
        src, dst = layers.get(layer_key(imp.source)), layers.get(layer_key(imp.target))
        if src is not None and dst is not None and dst > src:
            out.append(f"upward import: {imp.where()} imports {imp.target} "
                       f"(layer {layer_key(imp.source)} {src} < {layer_key(imp.target)} {dst})")
    for cycle in sorted(cycles(imports), key=lambda c: c[0].source):
        chain = " -> ".join([cycle[0].source] + [i.target for i in cycle])
        at = ", ".join(i.where() for i in cycle)
        itself = " (the module imports itself: one dot too few?)" if len(cycle) == 1 else ""
        out.append(f"import cycle: {chain}  [at {at}]{itself}")
    out += [f"private name across modules: {p}" for p in found.private]
    out += [f"no such module: {m}" for m in found.missing]
    return out


def repo_sources() -> dict[str, str]:
    return {p.relative_to(SRC).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(SRC.rglob("*.py"))}


# --- the repository ------------------------------------------------------------------------


def test_difflab_imports_only_downward_without_cycles_or_private_names():
    found = violations(repo_sources())
    assert not found, (f"{len(found)} layering violation(s) (layers: tests/test_layers.py "
                       f"LAYERS, docs/architecture.md):\n  " + "\n  ".join(found))


# --- the checker itself, on small fake packages --------------------------------------------


def test_module_names_and_relative_imports_resolve():
    found = collect({
        "__init__.py": "from . import samplers\n",
        "schedules.py": "",
        "samplers/__init__.py": "from .ddim import ddim\n",
        "samplers/ddim.py": "from ..schedules import Schedule\nfrom . import timesteps\n",
        "samplers/timesteps.py": "import difflab.schedules as s\nimport torch\n",
    })
    assert found.modules == {"difflab", "difflab.schedules", "difflab.samplers",
                       "difflab.samplers.ddim", "difflab.samplers.timesteps"}
    assert {(i.source, i.target) for i in found.imports} == {
        ("difflab", "difflab.samplers"),
        ("difflab.samplers", "difflab.samplers.ddim"),
        ("difflab.samplers.ddim", "difflab.schedules"),
        ("difflab.samplers.ddim", "difflab.samplers.timesteps"),
        ("difflab.samplers.timesteps", "difflab.schedules"),
    }


def test_one_line_per_import_statement_and_namespace_packages_resolve():
    found = violations({"schedules.py": "from .runs.load import a, b, c\n",
                        "runs/load.py": "from ..runs import plots\n", "runs/plots.py": ""})
    assert found == ["upward import: difflab.schedules:1 imports difflab.runs.load "
                     "(layer schedules 1 < runs 10)"]


def test_checker_catches_an_upward_import_even_a_lazy_one():
    found = violations({
        "schedules.py": "",
        "samplers/__init__.py": "",
        "samplers/consistency.py": (
            "from ..schedules import Schedule\n"
            "def is_cm(m):\n"
            "    from ..distill.consistency import ConsistencyModel\n"
            "    return isinstance(m, ConsistencyModel)\n"),
        "distill/__init__.py": "",
        "distill/consistency.py": "from ..samplers.consistency import is_cm\n",
    })
    assert found == ["upward import: difflab.samplers.consistency:3 (lazy) imports "
                     "difflab.distill.consistency (layer samplers 2 < distill 6)",
                     "import cycle: difflab.distill.consistency -> difflab.samplers.consistency"
                     " -> difflab.distill.consistency  [at difflab.distill.consistency:1, "
                     "difflab.samplers.consistency:3 (lazy)]"]


def test_checker_catches_the_old_circles():
    # the flat layout before the layers: cli <-> cli_cond, and
    # conditioning -> config -> samplers -> samplers/consistency -> conditioning (lazy)
    old = {
        "cli.py": "from .cli_cond import add_cond_flags\n",
        "cli_cond.py": "def main():\n    from .cli import parser\n",
        "conditioning.py": "from .config import TrainConfig\n",
        "config.py": "from .samplers import SAMPLERS\n",
        "samplers/__init__.py": "from .consistency import consistency\n",
        "samplers/consistency.py": ("def _unbind(m):\n"
                                    "    from ..conditioning import Bound\n"),
    }
    layers = {**LAYERS, "cli_cond": LAYERS["cli"], "conditioning": LAYERS["build"]}
    found = violations(old, layers)
    cyc = [f for f in found if f.startswith("import cycle")]
    assert len(cyc) == 2, found
    assert any("difflab.cli -> difflab.cli_cond -> difflab.cli" in f for f in cyc), cyc
    assert any("difflab.conditioning -> difflab.config -> difflab.samplers -> "
               "difflab.samplers.consistency -> difflab.conditioning" in f for f in cyc), cyc
    assert ("upward import: difflab.samplers.consistency:2 (lazy) imports "
            "difflab.conditioning (layer samplers 2 < conditioning 8)") in found
    assert not any(f.startswith("upward import: difflab.config") for f in found), found


def test_checker_catches_a_cycle_inside_one_layer_and_a_self_import():
    found = violations({
        "runs/__init__.py": "",
        "runs/a.py": "from .b import f\n",
        "runs/b.py": "def f():\n    from . import a\n",
        "runs/c.py": "from difflab.runs.c import g\n",
    })
    assert found == [
        "import cycle: difflab.runs.a -> difflab.runs.b -> difflab.runs.a  "
        "[at difflab.runs.a:1, difflab.runs.b:2 (lazy)]",
        "import cycle: difflab.runs.c -> difflab.runs.c  [at difflab.runs.c:1] (the module "
        "imports itself: one dot too few?)",
    ]


def test_checker_catches_private_names_and_skips_type_checking():
    found = violations({
        "schedules.py": "_TABLE = 1\n",
        "samplers/__init__.py": "",
        "samplers/_common.py": "def loop(): pass\n",
        "samplers/ddim.py": "from ._common import loop\n",  # a private module, public name: ok
        "samplers/ode.py": "import difflab.samplers._common\n",  # inside its package: ok
        "distill/__init__.py": "",
        "distill/consistency.py": "from ..samplers._common import loop\n",
        "training/__init__.py": "",
        "training/loop.py": "def _evaluate_after(): pass\n",
        "runs/__init__.py": "",
        "runs/distill.py": "from ..training.loop import _evaluate_after\n",
        "runs/train.py": ("from ..training import loop\n"
                          "from typing import TYPE_CHECKING\n"
                          "if TYPE_CHECKING:\n"
                          "    from ..cli import Args\n"
                          "def f():\n"
                          "    return loop._evaluate_after()\n"),
        "cli/__init__.py": "Args = dict\n__version__ = '0'\n",
        "nn/__init__.py": "from ..cli import __version__\n",
    })
    assert found == [
        "upward import: difflab.nn:1 imports difflab.cli (layer nn 4 < cli 11)",
        "private name across modules: difflab.distill.consistency:1 imports "
        "difflab.samplers._common, a private module of difflab.samplers",
        "private name across modules: difflab.runs.distill:1 imports _evaluate_after from "
        "difflab.training.loop",
        "private name across modules: difflab.runs.train:6 reads "
        "difflab.training.loop._evaluate_after",
    ]


def test_checker_wants_every_module_in_the_layer_table_and_every_import_to_exist():
    found = violations({"plugins/__init__.py": "", "schedules.py": "",
                        "runs/__init__.py": "",
                        "runs/train.py": ("def f():\n"
                                          "    from ..image_eval import image_split\n"
                                          "import difflab.runs.gone\n")})
    assert found == ["not in the layer table: difflab.plugins (add it to LAYERS)",
                     "no such module: difflab.runs.train:2 (lazy) imports from "
                     "difflab.image_eval",
                     "no such module: difflab.runs.train:3 imports difflab.runs.gone"]


@pytest.mark.parametrize("relpath", ["__init__.py", "__main__.py"])
def test_the_public_api_sits_on_top(relpath):
    assert layer_key(module_name(relpath)[0]) in LAYERS
    assert LAYERS[layer_key(module_name(relpath)[0])] == max(LAYERS.values())
