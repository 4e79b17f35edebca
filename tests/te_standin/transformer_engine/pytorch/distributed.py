"""TE 2.11.0 pytorch/distributed.py: the RNG tracker class megatron-core subclasses at import
(extensions/transformer_engine.py TECudaRNGStatesTracker), the activation-checkpoint function and the
recompute context megatron-core's CheckpointFunction enters (tensor_parallel/random.py).

The tracker keeps TE's bookkeeping (states_, seeds_, get/set_states); adding or forking a CUDA RNG
stream needs CUDA and raises. The CPU harness installs megatron-core's own tracker instead.
"""

from contextlib import AbstractContextManager, ContextDecorator

import torch


class CudaRNGStatesTracker:
    """TE distributed.CudaRNGStatesTracker (states_ dict and seeds_ set)."""

    def __init__(self):
        self.states_ = {}
        self.seeds_ = set()

    def reset(self):
        self.states_ = {}
        self.seeds_ = set()

    def get_states(self):
        return dict(self.states_)

    def set_states(self, states):
        self.states_ = states

    def add(self, name, seed):
        raise RuntimeError("CudaRNGStatesTracker.add needs CUDA (CPU transformer_engine stand-in)")

    def fork(self, name="model-parallel-rng"):
        raise RuntimeError("CudaRNGStatesTracker.fork needs CUDA (CPU transformer_engine stand-in)")


def checkpoint(function, *args, distribute_saved_activations=False, get_rng_state_tracker=None,
               tp_group=None, use_reentrant=True, **kwargs):
    """TE distributed.checkpoint: activation recompute. On the CPU, torch's own checkpoint."""
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=use_reentrant, **kwargs)


class activation_recompute_forward(AbstractContextManager, ContextDecorator):
    """TE distributed.activation_recompute_forward: marks FP8 activation recompute; with FP8 off
    (always, here) it only records the phase, as TE does when FP8 is not enabled."""

    def __init__(self, activation_recompute=False, recompute_phase=False):
        super().__init__()
        self.activation_recompute, self.recompute_phase = activation_recompute, recompute_phase

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
