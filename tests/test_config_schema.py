import pytest

from configs import default, linear, mlp
from mnist_jax import config_schema
from mnist_jax.errors import ConfigError


@pytest.mark.parametrize("module", [default, linear, mlp])
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_shipped_configs_are_valid(module, arg):
    config_schema.validate(module.get_config(arg))


def test_notebook_settings():
    assert (
        linear.get_config().model.name,
        linear.get_config().optim.learning_rate,
    ) == ("linear", 0.03)
    config = mlp.get_config()
    assert (
        config.model.hidden_units == (100, 100) and config.optim.learning_rate == 0.05
    )
    assert (
        config.train.num_steps,
        config.train.batch_size,
        config.train.num_periods,
    ) == (1000, 30, 10)
    assert (config.optim.clip_norm, config.optim.loss_reduction) == (5.0, "sum")
    assert (config.data.num_examples, config.data.num_train) == (10_000, 7_500)


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
