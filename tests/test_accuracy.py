"""The notebook's protocol on real MNIST files reaches the notebook's accuracy."""

import pytest

from configs import linear, mlp
from mnist_jax import train


@pytest.mark.parametrize(
    "config_module, min_val, min_test",
    [(linear, 0.88, 0.90), (mlp, 0.93, 0.94)],
    ids=["linear", "mlp"],
)
def test_notebook_accuracy_on_real_mnist(
    mnist_dir, tmp_path, config_module, min_val, min_test
):
    config = config_module.get_config()
    config.data.path = str(mnist_dir)
    results = train.train_and_evaluate(config, tmp_path)
    assert results["val/accuracy"] >= min_val
    assert results["test/accuracy"] >= min_test
