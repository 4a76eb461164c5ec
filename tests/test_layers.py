"""The package's folders are layers, and each imports only the layers below it: read
from every module's imports (AST), so a new import against the direction fails here."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mnist_jax"

# Lowest first. A module may import its own layer and any layer before it.
LAYERS = (
    ("errors", "registry", "platform"),  # foundations: no knowledge of MNIST or runs
    ("data",),  # data sets, their files, download and cache
    ("core",),  # models, optimizers, metrics, the compiled programs
    ("plots",),  # figures drawn from arrays
    ("config", "cli"),  # the schema (asks the registries) and the command lines' flags
    ("run",),  # a single run
    ("sweep",),  # many runs trained together
    ("analysis",),  # reading runs and sweeps back
    ("main",),  # the entry point
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def layer_of(module: str) -> str:
    """'mnist_jax.run.loop' -> 'run'; 'mnist_jax.plots' -> 'plots'."""
    return module.split(".")[1]


def imported(path: Path) -> set[str]:
    """Every mnist_jax module `path` imports, at any depth (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "mnist_jax":
                names |= {f"mnist_jax.{a.name}" for a in node.names}
            elif node.module.startswith("mnist_jax."):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("mnist_jax.")}
    return names


def module_name(path: Path) -> str:
    return ".".join(("mnist_jax", *path.relative_to(PACKAGE).with_suffix("").parts))


def test_every_module_belongs_to_a_layer():
    unplaced = {
        module_name(p)
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" or p.parent != PACKAGE
    }
    unplaced = {m for m in unplaced if layer_of(m) not in RANK}
    assert not unplaced, f"add these to LAYERS: {sorted(unplaced)}"


def test_imports_point_down_the_layers():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "__init__.py":
            continue
        here = layer_of(module_name(path))
        for name in imported(path):
            if RANK[layer_of(name)] > RANK[here]:
                upward.append(f"{module_name(path)} imports {name}")
    assert not upward, "\n".join(sorted(upward))


def test_the_rule_catches_an_upward_import(tmp_path):
    """The check itself: a core module importing the run layer is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from mnist_jax.run import loop\nimport mnist_jax.sweep.grid\n")
    assert {layer_of(n) for n in imported(bad)} == {"run", "sweep"}
    assert all(RANK[layer_of(n)] > RANK["core"] for n in imported(bad))
