"""Where each registered part a run uses was defined, so its readers find it again.

A model, optimizer, metric or data set registered outside the package (in a config
file, or in the researcher's own module) trains like a built-in one; a later process
reading the run (a resume, `checkpoints.restore_model`, the `experiments/` scripts)
has not run that file. A run records in its run_info.json the file of every part it
uses that the package does not define (`origins`), and readers import those files
again (`import_recorded`) before they read its config: one line names the file when
it cannot be imported, and `--import=FILE` gives another.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

from mnist_jax.core import metrics, models, optim
from mnist_jax.data import sources
from mnist_jax.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
RUN_INFO_KEY = "registered_parts"


def defining_file(obj) -> Path | None:
    """The source file of a function or class (also one whose module was loaded by path
    and is not in `sys.modules`, as config files are)."""
    candidates = [obj]
    if inspect.isclass(obj):
        candidates = [v for v in vars(obj).values() if inspect.isfunction(v)]
    for candidate in candidates:
        code = getattr(candidate, "__code__", None)
        if code is not None:
            return Path(code.co_filename).resolve()
    try:
        return Path(inspect.getfile(obj)).resolve()
    except (TypeError, OSError):
        return None


def _used(config, source: str) -> dict[str, object]:
    """'model.name=cnn' -> its definition, for every registered part `config` uses
    (`source`: the data set `data.source` resolved to)."""
    used = {
        f"model.name={config.model.name}": models.MODELS.entry(config.model.name).build,
        f"optim.name={config.optim.name}": optim.OPTIMIZERS.entry(
            config.optim.name
        ).build,
    }
    used[f"data.source={source}"] = sources.SOURCES.entry(source).load
    for name, metric in metrics.METRICS.items():
        used[f"metric={name}"] = metric.per_row
    return used


def origins(config, source: str) -> dict[str, str]:
    """{'model.name=cnn': '/abs/path/cnn_config.py', ...}: the parts `config` uses that
    were defined outside the package, by the file that defines each."""
    found = {}
    for part, definition in _used(config, source).items():
        path = defining_file(definition)
        if path is not None and PACKAGE_DIR not in path.parents:
            found[part] = str(path)
    return found


def import_file(spec: str) -> None:
    """Runs a module, by file path or dotted name, for what it registers: `--import`."""
    path = Path(spec).expanduser()
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise UserError(f"--import={spec}: no such file")
        name = f"mnist_jax_import_{path.stem}_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise UserError(f"--import={spec}: {type(e).__name__}: {e}") from e
        return
    try:
        importlib.import_module(spec)
    except ImportError as e:
        raise UserError(f"--import={spec}: {e}") from e


def _registered(part: str) -> bool:
    key, _, name = part.partition("=")
    if key == "model.name":
        return name in models.MODELS.names()
    if key == "optim.name":
        return name in optim.OPTIMIZERS.names()
    if key == "data.source":
        return name in sources.SOURCES.names()
    return name in metrics.METRICS


def import_recorded(recorded: dict | None, where: str) -> None:
    """Imports the file of each part in `recorded` (run_info.json's `registered_parts`)
    not registered in this process; one line when a file is gone or fails."""
    for part, file in (recorded or {}).items():
        if _registered(part):
            continue
        key, _, name = part.partition("=")
        hint = f"pass --import=FILE of the definition of {key} {name!r}"
        if not Path(file).is_file():
            raise UserError(f"{where}: {part} was registered in {file}, gone; {hint}")
        try:
            import_file(file)
        except UserError as e:
            raise UserError(f"{where}: {part} was registered in {file}: {e}") from e
        if not _registered(part) and key != "metric":
            raise UserError(f"{where}: {file} no longer registers {part}; {hint}")
