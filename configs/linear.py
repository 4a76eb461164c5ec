"""The notebook's linear (softmax) classifier solution: Adagrad lr 0.03, clip 5.0,
batch 30, 1000 steps in 10 periods, zero-initialised as TF's LinearClassifier.

    python -m mnist_jax.main --config=configs/linear.py --workdir=runs/mnist_linear

Measured (notebook data, --config.data.path=../shared/data/mnist, seeds 0-2):
validation accuracy 0.9016-0.9036, test 0.9072-0.9111. On the embedded sample (the offline default): 0.896 validation, 0.908 test.
`configs/linear.py:smoke` is the test variant.
"""

from mnist_jax.config import schema as config_schema


def get_config(arg=None):
    config = config_schema.default_config()
    config.model.name = "linear"  # Softmax regression on the 784 pixels.
    config.optim.learning_rate = 0.03  # The notebook's solution.
    return config_schema.variant(config, arg, {"smoke": config_schema.smoke})
