"""A run's data is identified by its content: config.json records where it came from
(resolved, absolute), resuming and analysis check the examples' sha256 against the
run's own, and the same data anywhere else is the same run."""

import json
import logging
import os
import shutil

import pytest

from configs import mlp
from mnist_jax import data
from mnist_jax.analysis import reports
from mnist_jax.analysis import runs as analysis
from mnist_jax.errors import DataError, UserError
from mnist_jax.run import checkpoints, identity, train
from tests import processes
from tests.processes import REPO

CSVS = ("mnist_train_small.csv", "mnist_test.csv")


def _real_config(path, num_steps=20):
    config = mlp.get_config("smoke")
    config.data.source, config.data.path = "auto", str(path)
    config.train.num_steps = num_steps
    return config


def _copy_data(source, dest):
    dest.mkdir(parents=True)
    for name in CSVS:
        shutil.copyfile(source / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, mnist_dir):
    """A smoke run on a copy of the real CSVs, trained from its folder with a
    relative data path: (root, workdir, data folder)."""
    root = tmp_path_factory.mktemp("identity")
    folder = _copy_data(mnist_dir, root / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MNIST_JAX_DATA_DIR", raising=False)
        train.train_and_evaluate(_real_config("data"), "run")
    return root, root / "run", folder


@pytest.fixture(scope="module")
def changed_data(tmp_path_factory, mnist_dir):
    """The real CSVs with the first two training rows swapped: other examples."""
    folder = _copy_data(mnist_dir, tmp_path_factory.mktemp("changed") / "data")
    train_csv = folder / CSVS[0]
    lines = train_csv.read_text().splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]
    train_csv.write_text("".join(lines))
    return folder


def _copy_run(workdir, dest):
    shutil.copytree(workdir, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def _recorded_sha(workdir):
    return json.loads((workdir / "run_info.json").read_text())["data"]["content_sha256"]


def _one_line(error: Exception) -> str:
    message = str(error)
    assert "\n" not in message
    return message


def _script(name, *args, cwd=REPO):
    return processes.run(REPO / "experiments" / f"{name}.py", *args, cwd=cwd)


def test_config_json_records_the_resolved_source_and_absolute_path(real_run):
    root, workdir, folder = real_run
    recorded = json.loads((workdir / "config.json").read_text())["data"]
    assert recorded["source"] == "mlcc"
    assert recorded["path"] == str(folder) and os.path.isabs(recorded["path"])


def test_relative_data_path_is_analysed_from_another_directory(
    real_run, tmp_path, monkeypatch
):
    _, workdir, _ = real_run
    monkeypatch.chdir(tmp_path)
    run = analysis.load_run(workdir)
    assert run.host.content_sha256 == _recorded_sha(workdir)
    report = reports.weight_evolution(workdir, units=4, out=tmp_path / "w")
    assert [row["step"] for row in report.rows] == [5, 10, 20]
    for name in report.files:
        assert (tmp_path / "w" / name).is_file()


def test_trailing_slash_and_moved_data_resume_and_analyse(real_run, tmp_path, caplog):
    _, workdir, folder = real_run
    workdir = _copy_run(workdir, tmp_path / "run")
    first = _copy_data(folder, tmp_path / "first")

    with caplog.at_level(logging.INFO, logger="mnist_jax"):
        train.train_and_evaluate(_real_config(f"{first}/"), workdir)
    assert "Resuming from the checkpoint at step 20." in caplog.messages

    moved = first.rename(tmp_path / "moved")
    results = train.train_and_evaluate(_real_config(moved, num_steps=30), workdir)
    assert results["num_steps"] == 30
    assert checkpoints.available_steps(workdir)[-1] == 30
    recorded = json.loads((workdir / "config.json").read_text())["data"]
    assert recorded["path"] == str(moved)

    again = moved.rename(tmp_path / "again")
    with pytest.raises(DataError) as missing:
        analysis.load_run(workdir)
    assert "file not found" in _one_line(missing.value)
    assert "--data_path" in str(missing.value)
    report = reports.confusion_report(
        workdir, split="test", out=tmp_path / "c", data_path=again
    )
    assert (tmp_path / "c" / "confusion_matrix_step30_test.csv").is_file()
    assert report.files[0] == "confusion_matrix_step30_test.png"


def test_changed_data_is_refused_on_resume_in_one_line(real_run, changed_data):
    _, workdir, _ = real_run

    def snapshot():  # everything but the lock file, which records who holds it
        return {
            p: p.stat().st_mtime_ns
            for p in workdir.rglob("*")
            if p.is_file() and p.name != ".lock"
        }

    before = snapshot()
    expected = _recorded_sha(workdir)
    # Other rows in a folder, and another source (where the data lives is no longer
    # compared as config, so the content check is what refuses it).
    for config, where in (
        (_real_config(changed_data), str(changed_data)),
        (mlp.get_config("smoke"), "the embedded sample"),
    ):
        other = data.load(config.data).content_sha256  # the second sha256 named
        with pytest.raises(UserError) as refused:
            train.train_and_evaluate(config, workdir)
        message = _one_line(refused.value)
        assert other != expected
        assert message.startswith(
            f"{workdir} was trained on data with sha256 {expected[:12]}, but "
            f"{where} holds data with sha256 {other[:12]}; "
        )
        assert message.endswith(
            "point --config.data.path at the run's data, or use a new --workdir"
        )
    assert snapshot() == before


def test_changed_data_is_refused_in_analysis_in_one_line(real_run, changed_data):
    _, workdir, _ = real_run
    with pytest.raises(UserError) as refused:
        analysis.load_run(workdir, data_path=changed_data)
    message = _one_line(refused.value)
    expected = _recorded_sha(workdir)
    changed = data.load(_real_config(changed_data).data).content_sha256
    assert changed != expected
    assert message.startswith(
        f"{workdir} was trained on data with sha256 {expected[:12]}, but "
        f"{changed_data} holds data with sha256 {changed[:12]}; "
    )
    assert "--data_path" in message

    result = _script(
        "confusion_matrix", f"--workdir={workdir}", f"--data_path={changed_data}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {message}"


def test_runs_on_the_same_data_share_one_load_and_are_each_checked(real_run, tmp_path):
    """`load_run(..., shared=)` reads a sweep's data once for all its members, yet
    still checks every run against the data it recorded."""
    _, workdir, folder = real_run
    other = _copy_run(workdir, tmp_path / "other")
    shared = analysis.Shared()
    first = analysis.load_run(workdir, shared=shared)
    second = analysis.load_run(other, shared=shared)
    assert second.host is first.host and second.dataset is first.dataset
    moved = analysis.load_run(other, data_path=folder, shared=shared)
    assert moved.host is not first.host and len(shared.datasets) == 2

    info = json.loads((other / "run_info.json").read_text())
    info["data"]["content_sha256"] = "0" * 64
    (other / "run_info.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="trained on data with sha256 000000000000"):
        analysis.load_run(other, shared=shared)


def test_an_old_auto_config_is_checked_against_the_fingerprint(
    real_run, changed_data, tmp_path, monkeypatch
):
    """A workdir from before config.json recorded the resolved source says `auto`;
    a changed $MNIST_JAX_DATA_DIR no longer silently gives other data."""
    _, workdir, folder = real_run
    workdir = _copy_run(workdir, tmp_path / "run")
    config = json.loads((workdir / "config.json").read_text())
    config["data"] |= {"source": "auto", "path": ""}
    (workdir / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("MNIST_JAX_DATA_DIR", str(changed_data))
    with pytest.raises(UserError, match="trained on data with sha256"):
        analysis.load_run(workdir)
    monkeypatch.setenv("MNIST_JAX_DATA_DIR", str(folder))
    assert analysis.load_run(workdir).host.content_sha256 == _recorded_sha(workdir)


def test_a_workdir_without_a_recorded_fingerprint_loads_unchecked(
    real_run, changed_data, tmp_path
):
    _, workdir, _ = real_run
    workdir = _copy_run(workdir, tmp_path / "run")
    info = json.loads((workdir / "run_info.json").read_text())
    del info["data"]
    (workdir / "run_info.json").write_text(json.dumps(info))
    assert identity.recorded_data_sha256(workdir) is None
    analysis.load_run(workdir, data_path=changed_data)


def test_a_config_lacking_a_field_resumes_with_its_default(tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(mlp.get_config("smoke"), workdir)
    config_json = workdir / "config.json"
    metadata_json = workdir / "checkpoints" / "20" / "metadata" / "metadata"
    for path in (config_json, metadata_json):
        saved = json.loads(path.read_text())
        config = saved.get("config", saved)
        del config["optim"]["loss_reduction"]  # as if written before the field existed
        path.write_text(json.dumps(saved))
    assert identity.read_config(workdir).optim.loss_reduction == "sum"

    extended = mlp.get_config("smoke")
    extended.train.num_steps = 30
    assert train.train_and_evaluate(extended, workdir)["num_steps"] == 30

    other = mlp.get_config("smoke")
    other.train.num_steps = 30
    other.optim.loss_reduction = "mean"
    with pytest.raises(
        UserError, match=r"differing fields: optim.loss_reduction \('sum' -> 'mean'\)"
    ):
        train.train_and_evaluate(other, workdir)


def test_where_the_data_lives_is_not_part_of_a_runs_identity():
    config = mlp.get_config("smoke").to_dict()
    moved = json.loads(json.dumps(config))
    moved["data"] |= {"source": "mlcc", "path": "/elsewhere/", "url": "http://x/"}
    assert identity.config_hash(moved) == identity.config_hash(config)
    identity.check_resumable(moved, config, "W")
    moved["data"]["num_train"] = 700
    assert identity.config_hash(moved) != identity.config_hash(config)
    with pytest.raises(UserError, match="data.num_train"):
        identity.check_resumable(moved, config, "W")


def test_compare_runs_writes_a_new_folder_and_never_overwrites(
    real_run, tmp_path, monkeypatch
):
    _, workdir, _ = real_run
    monkeypatch.chdir(tmp_path)
    report = reports.compare_runs([workdir], names=["mlp"])
    assert report.folder.name.startswith("comparison-")
    assert (tmp_path / report.folder / "comparison.md").is_file()
    assert not (workdir / "analysis" / "comparison.md").exists()
    with pytest.raises(UserError) as refused:
        reports.compare_runs([workdir], out=report.folder)
    assert "already holds a comparison.md" in _one_line(refused.value)
    again = reports.compare_runs(
        [workdir], names=["again"], out=report.folder, overwrite=True
    )
    assert "| again |" in (again.folder / "comparison.md").read_text()
    assert reports.default_comparison_dir() != report.folder
