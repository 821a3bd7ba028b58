"""QLoRA training of the adapters the harness judges. Heavy libraries load inside `train()`."""

from train.config import PROFILES, TrainConfig, profile
from train.dataset import dataset_hash, write_dataset

__all__ = ["PROFILES", "TrainConfig", "dataset_hash", "profile", "train", "write_dataset"]


def train(*args, **kwargs):
    """See train.trainer.train (imported lazily: it pulls in torch and transformers)."""
    from train.trainer import train as _train

    return _train(*args, **kwargs)
