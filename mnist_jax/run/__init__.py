"""A single run: `train.train_and_evaluate`, its loop, schedule, checkpoints and files."""
