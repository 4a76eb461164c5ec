"""mnist_jax: the MLCC MNIST notebook's classifiers in JAX/Flax, faithfully and fast."""

__version__ = "0.1.0"
