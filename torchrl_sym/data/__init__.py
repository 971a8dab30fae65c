"""Offline data: replay buffers over Minari, D4RL hdf5 and toy datasets; reference scores."""

from torchrl_sym.data.offline import (
    ACTION_CLIP,
    REWARD_TRANSFORMS,
    DatasetError,
    OfflineDatasetInfo,
    OfflineReplayBuffer,
    load_offline_dataset,
    make_offline_replay_buffer,
)
from torchrl_sym.data.scores import (
    D4RL_REF_SCORES,
    ReferenceScoresError,
    normalized_score,
    reference_scores,
)
from torchrl_sym.data.toy2d import TOY2D_DATASETS, make_toy2d_dataset, sample_toy2d

__all__ = [
    "ACTION_CLIP",
    "D4RL_REF_SCORES",
    "REWARD_TRANSFORMS",
    "TOY2D_DATASETS",
    "DatasetError",
    "OfflineDatasetInfo",
    "OfflineReplayBuffer",
    "ReferenceScoresError",
    "load_offline_dataset",
    "make_offline_replay_buffer",
    "make_toy2d_dataset",
    "normalized_score",
    "reference_scores",
    "sample_toy2d",
]
