"""Test-wide settings: one torch thread. The tests' tensors are small, and on a shared 2-core
machine intra-op threads cost far more in contention than they win (10× on the oracle)."""

import torch

torch.set_num_threads(1)
