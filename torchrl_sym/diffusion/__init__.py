"""Diffusion behavior models: noise schedules, ε-networks, the actor and its samplers."""

from torchrl_sym.diffusion.actor import DiffusionBehaviorActor, DiffusionChain
from torchrl_sym.diffusion.networks import (
    EnsembleLinear,
    GaussianFourierTimeEmbedding,
    MLPNoisePredictor,
    NoiseConditionedCritic,
    ResidualMLPNoisePredictor,
    SinusoidalTimeEmbedding,
    make_time_embedding,
)
from torchrl_sym.diffusion.schedules import (
    ContinuousSchedule,
    CosineContinuousSchedule,
    CosineDiscreteSchedule,
    DiscreteSchedule,
    LinearDiscreteSchedule,
    NoiseSchedule,
    SamplingGrid,
    VPDiscreteSchedule,
    VPSDESchedule,
)

__all__ = [
    "ContinuousSchedule",
    "CosineContinuousSchedule",
    "CosineDiscreteSchedule",
    "DiffusionBehaviorActor",
    "DiffusionChain",
    "DiscreteSchedule",
    "EnsembleLinear",
    "GaussianFourierTimeEmbedding",
    "LinearDiscreteSchedule",
    "MLPNoisePredictor",
    "NoiseConditionedCritic",
    "NoiseSchedule",
    "ResidualMLPNoisePredictor",
    "SamplingGrid",
    "SinusoidalTimeEmbedding",
    "VPDiscreteSchedule",
    "VPSDESchedule",
    "make_time_embedding",
]
