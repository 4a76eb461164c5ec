"""The notebook's linear (softmax) classifier solution: Adagrad lr 0.03, clip 5.0,
batch 30, 1000 steps in 10 periods, zero-initialised as TF's LinearClassifier.

    python -m mnist_jax.main --config=configs/linear.py --workdir=runs/mnist_linear

Expect (notebook data, --config.data.path=../shared/data/mnist): validation ~0.90,
test ~0.90 accuracy, a few seconds end to end on a 2-core CPU.
`configs/linear.py:smoke` is the test variant.
"""

from mnist_jax import config_schema


def get_config(arg=None):
    config = config_schema.default_config()
    config.model.name = "linear"  # Softmax regression on the 784 pixels.
    config.optim.learning_rate = 0.03  # The notebook's solution.
    return config_schema.variant(config, arg, {"smoke": config_schema.smoke})
