"""Training inside a Ray job: data loading, the training loop and evaluation."""
