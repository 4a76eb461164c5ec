"""Models, optimizers, metrics and the compiled programs that train and evaluate them:
the hot path, pure functions over arrays."""
