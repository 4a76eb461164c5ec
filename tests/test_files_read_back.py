"""Every file the project reads back is checked: config.json, run_info.json,
metrics.jsonl, results.json (checkpoint_links.json: test_member_identity.py) and what
a config file's get_config() returns. Malformed, each is one `error:` line naming the
file, exit code 2, and nothing in the workdir changed; every analysis flag is checked
as the training flags are."""

import json
from pathlib import Path

import pytest

from mnist_jax.analysis import reports
from mnist_jax.errors import UserError
from tests import processes
from tests.conftest import copy_workdir
from tests.test_bad_input import _snapshot

WEIGHT_EVOLUTION = processes.REPO / "experiments" / "weight_evolution.py"
CONFUSION_MATRIX = processes.REPO / "experiments" / "confusion_matrix.py"
COMPARE_MODELS = processes.REPO / "experiments" / "compare_models.py"


def _one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for fragment in fragments:
        assert fragment in last, last
    return last


@pytest.mark.parametrize(
    "name, text, problem",
    [
        ("config.json", "{", "not valid JSON"),
        ("config.json", "[1, 2]", "expected a JSON object, found list"),
        (
            "config.json",
            '{"optim": {"learning_rate": "abc"}}',
            "optim.learning_rate='abc' cannot be read as a float",
        ),
        ("run_info.json", "null", "expected a JSON object, found NoneType"),
        ("run_info.json", '{"data": {"content_sha256": 7}}', "is not a sha256"),
        ("metrics.jsonl", '{"step": 10}\n{"step": "x"}\n', "line 2: not a row"),
        ("metrics.jsonl", '{"step": 10, "val/accuracy": [1]}\n', "is not a number"),
        ("results.json", '{"val/accuracy": 0.9}', "'test/accuracy' is missing"),
        (
            "results.json",
            '{"val/accuracy": 0.9, "test/accuracy": 0.9, "num_steps": 20, '
            '"train_seconds": 1, "warnings": [], "val/log_loss": "low"}',
            "val/log_loss='low' is not a number",
        ),
    ],
)
def test_a_malformed_workdir_file_is_one_line_naming_it(
    mlp_smoke_run, tmp_path, name, text, problem
):
    """In the process (a `UserError`, which the command lines print as one line: the
    next tests), read by the comparison report, which reads all four files."""
    workdir = copy_workdir(mlp_smoke_run, tmp_path / "run")
    (workdir / name).write_text(text)
    before = _snapshot(workdir)
    with pytest.raises(UserError) as caught:
        reports.compare_runs([workdir], out=tmp_path / "out")
    message = str(caught.value)
    assert message.startswith(f"{workdir / name}") and problem in message
    assert "\n" not in message
    assert _snapshot(workdir) == before


def test_a_malformed_file_through_the_command_line(mlp_smoke_run, tmp_path):
    workdir = copy_workdir(mlp_smoke_run, tmp_path / "run")
    (workdir / "metrics.jsonl").write_text('{"step": "x"}\n')
    result = processes.run(
        COMPARE_MODELS, f"--workdirs={workdir}", f"--out={tmp_path / 'out'}"
    )
    _one_line_error(result, f"{workdir / 'metrics.jsonl'}, line 1: not a row")


def test_a_malformed_run_info_json_refuses_a_resume_untouched(mlp_smoke_run, tmp_path):
    workdir = copy_workdir(mlp_smoke_run, tmp_path / "run")
    (workdir / "run_info.json").write_text("{")
    before = _snapshot(workdir)
    result = processes.run(
        "mnist_jax.main", "--config=configs/mlp.py:smoke", f"--workdir={workdir}"
    )
    _one_line_error(result, f"{workdir / 'run_info.json'}: not valid JSON")
    assert _snapshot(workdir) == before


@pytest.mark.parametrize("module", ["mnist_jax.main", "mnist_jax.sweep"])
@pytest.mark.parametrize(
    "body, fragment",
    [
        ("{'seed': 0}", "get_config() returned dict, not an ml_collections"),
        ("None", "--config must have a value other than None"),  # absl's own
    ],
)
def test_a_config_file_returning_no_config_dict_is_one_line(
    tmp_path, module, body, fragment
):
    path = tmp_path / "plain.py"
    path.write_text(f"def get_config(arg=None):\n    return {body}\n")
    result = processes.run(module, f"--config={path}", f"--workdir={tmp_path / 'w'}")
    _one_line_error(result, fragment)
    assert not (tmp_path / "w").exists()


def test_load_config_refuses_what_is_not_a_config_dict(tmp_path):
    from mnist_jax.config import files as config_files
    from mnist_jax.errors import ConfigError

    path = tmp_path / "plain.py"
    path.write_text("def get_config(arg=None):\n    return {'seed': 0}\n")
    with pytest.raises(ConfigError, match="get_config\\(\\) returned dict"):
        config_files.load_config(str(path))


@pytest.mark.parametrize(
    "script, args, message",
    [
        (WEIGHT_EVOLUTION, ["--units=-3"], "--units=-3"),
        (WEIGHT_EVOLUTION, ["--units=0"], "--units=0"),
        (WEIGHT_EVOLUTION, ["--steps=10,x"], "--steps must be checkpoint steps"),
        (CONFUSION_MATRIX, ["--step=-1"], "--step=-1"),
        (CONFUSION_MATRIX, ["--pairs=-2"], "--pairs=-2"),
        (CONFUSION_MATRIX, ["--split=train"], "--split"),
    ],
)
def test_analysis_flags_are_checked(mlp_smoke_run, script, args, message):
    result = processes.run(script, f"--workdir={mlp_smoke_run.workdir}", *args)
    _one_line_error(result, message)


def test_sweep_member_results_are_checked(tmp_path):
    from mnist_jax.errors import UserError
    from mnist_jax.sweep import members as sweep_members

    member = Path(tmp_path)
    (member / "results.json").write_text(json.dumps({"num_steps": 20}))
    with pytest.raises(UserError, match="results.json: 'val/accuracy' is missing"):
        sweep_members.finished(member)
