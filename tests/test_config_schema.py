import json

import pytest

from configs import default, linear, mlp
from mnist_jax.config import schema as config_schema
from mnist_jax.errors import ConfigError
from mnist_jax.run import identity


@pytest.mark.parametrize("module", [default, linear, mlp])
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_shipped_configs_are_valid(module, arg):
    config_schema.validate(module.get_config(arg))


def test_mlp_config_is_the_default():
    """`default_config()` is documented as the notebook's MLP: `configs/mlp.py`."""
    assert mlp.get_config().to_dict() == config_schema.default_config().to_dict()


@pytest.mark.parametrize("module", [default, linear, mlp])
def test_smoke_shrinks_the_run_not_the_experiment(module):
    """`:smoke` changes how much data and how many steps, never the model, the
    optimizer or the seed: a test of a smoke run is a test of the experiment."""
    full, smoke = module.get_config().to_dict(), module.get_config("smoke").to_dict()
    for group in ("model", "optim", "mesh"):
        assert smoke[group] == full[group], group
    assert smoke["seed"] == full["seed"]
    assert smoke["data"]["num_train"] / smoke["data"]["num_examples"] == pytest.approx(
        full["data"]["num_train"] / full["data"]["num_examples"]
    )


@pytest.mark.parametrize("module", [default, linear, mlp])
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_written_config_reads_back_the_same(tmp_path, module, arg):
    """What a run writes to config.json, analysis reads back as the same config."""
    config = module.get_config(arg)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    assert identity.read_config(tmp_path).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("train.num_steps", 0, "train.num_steps=0 must be a positive integer"),
        ("train.batch_size", -3, "train.batch_size=-3 must be a positive integer"),
        ("train.num_periods", 0, "train.num_periods=0 must be a positive integer"),
        (
            "optim.learning_rate",
            0.0,
            "optim.learning_rate=0.0 must be a positive number",
        ),
        ("optim.clip_norm", -1.0, "optim.clip_norm=-1.0 must be a positive number"),
        (
            "optim.loss_reduction",
            "avg",
            "optim.loss_reduction='avg' is not one of sum, mean",
        ),
        ("model.name", "cnn", "model.name='cnn' is not one of linear, mlp"),
        ("model.hidden_units", (100, 0), "model.hidden_units=(100, 0) must be a tuple"),
        ("model.dropout_rate", 1.0, "model.dropout_rate=1.0 must be in [0, 1)"),
        (
            "data.source",
            "web",
            "data.source='web' is not one of auto, embedded, mlcc, idx",
        ),
        (
            "data.num_train",
            10_000,
            "data.num_train=10000 must be below data.num_examples=10000",
        ),
        (
            "train.num_periods",
            2000,
            "train.num_periods=2000 exceeds train.num_steps=1000",
        ),
    ],
)
def test_bad_values_name_the_field(field, value, message):
    config = mlp.get_config()
    group, name = field.split(".")
    with config.unlocked():
        config[group][name] = value
    with pytest.raises(ConfigError) as error:
        config_schema.validate(config)
    assert str(error.value) == message or str(error.value).startswith(message)


def test_unknown_field_suggests_the_closest():
    config = mlp.get_config()
    config.train.num_step = 5
    with pytest.raises(
        ConfigError,
        match="unknown config field 'train.num_step'; did you mean 'train.num_steps'",
    ):
        config_schema.validate(config)
