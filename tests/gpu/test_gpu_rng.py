"""``make gpu-check``: a rank's CUDA random state, saved and restored on its own GPU only
(:mod:`pastflow.models.serialize`; the CPU test records which GPUs are touched)."""

from __future__ import annotations

import torch

from gpu_helpers import GPU_ONLY, n_gpus
from pastflow.models.serialize import rng_from_state, rng_to_state

pytestmark = GPU_ONLY


def test_the_cuda_random_stream_of_the_last_gpu_resumes_exactly():
    device = torch.device("cuda", n_gpus() - 1)  # not GPU 0: the index must be honoured
    torch.manual_seed(5)
    meta, tensors = rng_to_state(device)
    assert [k for k in tensors if "cuda" in k] == ["rng.cuda"]
    first = torch.rand(4, device=device)
    torch.manual_seed(6)
    rng_from_state(meta, tensors, device)
    assert torch.equal(first, torch.rand(4, device=device))
