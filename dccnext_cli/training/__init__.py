"""What every training loop shares, whatever it trains: the Accelerate set-up and checkpoints of a run's state.

Classification and the dense tasks both build on it, so a run of either launches, accumulates gradients,
checkpoints and resumes the same way.
"""
