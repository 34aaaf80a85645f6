"""Training: a model-agnostic loop (`Trainer`), its checkpoints and schedule, and the stage."""

from lmforge.train.trainer import BatchSource, Trainer, TrainerSettings, TrainResult

__all__ = ["BatchSource", "TrainResult", "Trainer", "TrainerSettings"]
