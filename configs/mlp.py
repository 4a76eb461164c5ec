"""The notebook's MLP solution: hidden (100, 100), ReLU, Adagrad lr 0.05, clip 5.0,
batch 30, 1000 steps in 10 periods.

    python -m mnist_jax.main --config=configs/mlp.py --workdir=runs/mnist_mlp

Measured (notebook data, --config.data.path=../shared/data/mnist, seeds 0-2):
validation accuracy 0.9436-0.9488, test 0.9457-0.9533 (the README's results table,
per seed; they move by a few digits between CPUs). On the embedded 5,000-example
sample (the offline default): 0.936 validation, 0.936 test.
Variants: `configs/mlp.py:smoke` (tests); override fields with e.g.
`--config.model.hidden_units='(50, 50)' --config.model.dropout_rate=0.1`.
"""

from mnist_jax.config import schema as config_schema


def get_config(arg=None):
    config = config_schema.default_config()
    config.model.name = (
        "mlp"  # ReLU hidden layers, glorot-uniform kernels (DNNClassifier).
    )
    config.model.hidden_units = (100, 100)  # The notebook's solution.
    config.optim.learning_rate = 0.05  # The notebook's solution.
    return config_schema.variant(config, arg, {"smoke": config_schema.smoke})
