"""Classification: the training loop (Accelerate), evaluation, prediction, recipes and run checkpoints."""
