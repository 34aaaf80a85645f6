"""Training: a model-agnostic loop (`Trainer`), its checkpoints and schedule, and the stage."""
