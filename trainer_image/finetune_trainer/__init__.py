"""The trainer: data stage and fine-tuning that run on a Ray cluster (or locally)."""
