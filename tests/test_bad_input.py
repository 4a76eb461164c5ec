"""Every bad input: one clear message, and nothing already in the workdir changed.

In-process for the whole matrix (the message and the untouched workdir); through the
real command line for a sample (exit code 2, one line, no traceback)."""

import gzip
import shutil

import pytest

from configs import mlp
from mnist_jax.data import readers as sources
from mnist_jax.errors import UserError
from mnist_jax.run import train
from tests import processes
from tests.conftest import copy_workdir
from tests.test_data import _idx_bytes, write_idx_dir, write_mlcc_dir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mlp_smoke_run):
    """A finished run whose files must survive every bad input untouched (a copy of the
    shared one: a refused run still takes the workdir's lock)."""
    return copy_workdir(mlp_smoke_run, tmp_path_factory.mktemp("finished") / "run")


def _snapshot(path):
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _csv_case(edit):
    def make(tmp_path, config):
        folder, _, _ = write_mlcc_dir(tmp_path / "data")
        train_csv = folder / sources.MLCC_TRAIN
        lines = train_csv.read_text().splitlines()
        train_csv.write_text("\n".join(edit(lines)) + ("\n" if edit(lines) else ""))
        config.data.source, config.data.path = "mlcc", str(folder)
        config.data.num_examples, config.data.num_train = 30, 20
        config.train.batch_size = 10

    return make


def _idx_case(damage):
    def make(tmp_path, config):
        folder, images, labels = write_mlcc_dir(tmp_path / "csv")
        idx = write_idx_dir(
            tmp_path / "idx", images[:40], labels[:40], images[40:], labels[40:]
        )
        damage(idx, images, labels)
        config.data.source, config.data.path = "idx", str(idx)
        config.data.num_examples, config.data.num_train = 30, 20
        config.train.batch_size = 10

    return make


def _write_gz(path, payload):
    with gzip.open(path, "wb") as f:
        f.write(payload)


def _set(**fields):
    def make(tmp_path, config):
        for name, value in fields.items():
            group, field = name.split("__")
            with config.unlocked():
                config[group][field] = value

    return make


CASES = {
    "missing file": (
        lambda t, c: (
            _csv_case(lambda ls: ls)(t, c) or (t / "data" / sources.MLCC_TRAIN).unlink()
        ),
        "file not found",
    ),
    "empty file": (_csv_case(lambda ls: []), "file is empty"),
    "header row": (
        _csv_case(lambda ls: ["label," + ",".join(f"p{i}" for i in range(784))] + ls),
        "a header row?",
    ),
    "wrong column count": (
        _csv_case(lambda ls: [",".join(ln.split(",")[:-1]) for ln in ls]),
        "expected 785 columns",
    ),
    "ragged row": (
        _csv_case(lambda ls: [ls[0], ls[1] + ",7"] + ls[2:]),
        "rows of different lengths",
    ),
    "non-numeric cell": (
        _csv_case(lambda ls: [ls[0], ls[1].replace(",0,", ",abc,", 1)] + ls[2:]),
        "non-numeric cell 'abc'",
    ),
    "NaN cell": (
        _csv_case(lambda ls: [ls[0].replace(",0,", ",NaN,", 1)] + ls[1:]),
        "NaN",
    ),
    "label out of range": (
        _csv_case(lambda ls: ["10" + ls[0][1:]] + ls[1:]),
        "label 10 is not an integer in 0..9",
    ),
    "pixel out of range": (
        _csv_case(lambda ls: [ls[0][:-1] + "300"] + ls[1:]),
        "pixel 300 is not an integer in 0..255",
    ),
    "fractional pixel": (
        _csv_case(lambda ls: [ls[0][:-1] + "2.5"] + ls[1:]),
        "pixel 2.5 is not",
    ),
    "idx bad magic": (
        _idx_case(
            lambda d, i, lab: _write_gz(
                d / sources.IDX_FILES["train_images"],
                _idx_bytes(1234, i[:40].reshape(-1, 28, 28)),
            )
        ),
        "bad IDX magic number 1234",
    ),
    "idx truncated": (
        _idx_case(
            lambda d, i, lab: _write_gz(
                d / sources.IDX_FILES["train_images"],
                _idx_bytes(2051, i[:40].reshape(-1, 28, 28))[:-500],
            )
        ),
        "truncated",
    ),
    "idx count mismatch": (
        _idx_case(
            lambda d, i, lab: _write_gz(
                d / sources.IDX_FILES["train_labels"],
                _idx_bytes(2049, lab[:39].astype("uint8")),
            )
        ),
        "40 images but .* has 39 labels",
    ),
    "idx not gzip": (
        _idx_case(
            lambda d, i, lab: (d / sources.IDX_FILES["test_labels"]).write_bytes(
                b"not gzip at all"
            )
        ),
        "not a gzip file",
    ),
    "fewer rows than num_examples": (
        lambda t, c: (
            _csv_case(lambda ls: ls)(t, c)
            or _set(data__num_examples=100, data__num_train=50)(t, c)
        ),
        "has 40 rows, fewer than data.num_examples=100",
    ),
    "num_train >= num_examples": (
        _set(data__num_train=1000),
        "data.num_train=1000 must be below data.num_examples=1000",
    ),
    "unknown model": (_set(model__name="cnn"), "model.name='cnn' is not one of"),
    "unknown source": (_set(data__source="s3"), "data.source='s3' is not one of"),
    "non-positive steps": (
        _set(train__num_steps=-5),
        "train.num_steps=-5 must be a positive integer",
    ),
    "non-positive batch": (
        _set(train__batch_size=0),
        "train.batch_size=0 must be a positive integer",
    ),
    "non-positive learning rate": (
        _set(optim__learning_rate=-0.1),
        "optim.learning_rate=-0.1 must be a positive number",
    ),
    "bad checkpoint steps": (
        _set(checkpoint__steps=(10, 0)),
        r"checkpoint.steps=\(10, 0\) must be a tuple of positive integers",
    ),
    "batch larger than training set": (
        _set(train__batch_size=800),
        "train.batch_size=800 exceeds the 750 training rows",
    ),
    "workdir from another config": (
        _set(optim__learning_rate=0.5),
        r"holds a run of another config; differing fields: optim.learning_rate \(0.05 -> 0.5\)",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_named_and_workdir_untouched(workdir, tmp_path, case):
    make, message = CASES[case]
    config = mlp.get_config("smoke")
    make(tmp_path, config)
    before = _snapshot(workdir)
    with pytest.raises(UserError, match=message):
        train.train_and_evaluate(config, workdir)
    assert _snapshot(workdir) == before


def test_unknown_field_suggests(workdir):
    config = mlp.get_config("smoke")
    config.optim.learning_rte = 0.1
    with pytest.raises(UserError, match="did you mean 'optim.learning_rate'"):
        train.train_and_evaluate(config, workdir)


def test_workdir_that_is_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("keep me")
    with pytest.raises(UserError, match="exists and is not a folder"):
        train.train_and_evaluate(mlp.get_config("smoke"), target)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("damage", ["corrupt", "foreign"])
def test_damaged_or_foreign_checkpoint(workdir, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    steps_dir = copy / "checkpoints"
    if damage == "corrupt":
        for path in (steps_dir / "20").rglob("*"):
            if path.is_file():
                path.write_bytes(b"\0garbage")
    else:
        shutil.rmtree(steps_dir / "20")
        (steps_dir / "20").mkdir()
        (steps_dir / "20" / "weights.bin").write_bytes(b"someone else's")
    before = _snapshot(copy)
    with pytest.raises(
        UserError,
        match=r"checkpoints/20: not a readable mnist_jax checkpoint|checkpoints/20: checkpoint is damaged",
    ):
        train.train_and_evaluate(mlp.get_config("smoke"), copy)
    assert _snapshot(copy) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (
            [
                "--config.data.source=mlcc",
                "--config.data.path={data}",
                "--config.data.num_examples=30",
                "--config.data.num_train=20",
                "--config.train.batch_size=10",
            ],
            "non-numeric cell 'abc'",
        ),
        (["--config.optim.learning_rate=0.5"], "holds a run of another config"),
    ],
)
def test_cli_bad_input_exit_2_no_traceback(workdir, tmp_path, args, message):
    _csv_case(lambda ls: [ls[0], ls[1].replace(",0,", ",abc,", 1)] + ls[2:])(
        tmp_path, mlp.get_config("smoke")
    )
    before = _snapshot(workdir)
    args = [a.format(data=tmp_path / "data") for a in args]
    result = processes.run(
        "mnist_jax.main", "--config=configs/mlp.py:smoke", f"--workdir={workdir}", *args
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert "Traceback" not in result.stderr
    assert _snapshot(workdir) == before
    debug = processes.run(
        "mnist_jax.main",
        "--config=configs/mlp.py:smoke",
        f"--workdir={workdir}",
        "--debug",
        *args,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
