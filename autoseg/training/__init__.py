"""Training: losses (`autoseg.training.loss`), data loading, the training loop and checkpoints."""
