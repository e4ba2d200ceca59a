"""Hyperparameter sweeps: several Ray Train runs of one job under Ray Tune (Optuna + ASHA)."""
