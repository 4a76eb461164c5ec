"""The command lines' edges: config variants, a missing --config."""

import importlib

import pytest

from mnist_jax.errors import ConfigError
from tests.conftest import run_module

CONFIGS = ("default", "linear", "mlp", "sweep_linear", "sweep_mlp")


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_refuses_an_unknown_variant(name):
    get_config = importlib.import_module(f"configs.{name}").get_config
    assert get_config("smoke").train.num_steps < get_config().train.num_steps
    assert get_config(None).to_dict() == get_config().to_dict()
    with pytest.raises(
        ConfigError, match=r"^unknown config variant 'smokee'; known: smoke$"
    ):
        get_config("smokee")


@pytest.mark.parametrize("module", ["mnist_jax.main", "mnist_jax.sweep"])
def test_unknown_variant_on_the_command_line(module, tmp_path):
    result = run_module(
        module, "--config=configs/mlp.py:smokee", f"--workdir={tmp_path / 'w'}"
    )
    assert _one_error_line(result) == (
        "error: --config=configs/mlp.py:smokee: "
        "unknown config variant 'smokee'; known: smoke"
    )
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("module", ["mnist_jax.main", "mnist_jax.sweep"])
@pytest.mark.parametrize("overrides", [(), ("--config.data.path=foo",)])
def test_missing_config_is_named(module, overrides, tmp_path):
    result = run_module(module, f"--workdir={tmp_path}", *overrides)
    assert _one_error_line(result).startswith("error: --config is missing (")
