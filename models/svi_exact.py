"""The exact reverse pass of the SVI steps: each product J(g_k)^T a_p by double backward through step k, clipping
included (w = J_clip^T a_p; J_clip is symmetric, so J_lambda(g_k)^T a_p = H_lambda,lambda w and J_theta(g_k)^T a_p =
H_theta,lambda w). The gradient of the forward algorithm to rounding; recommended for new work.

The double backward runs in the context the decoder names (`Decoder.double_backward_context`: cuDNN off for an LSTM,
whose cuDNN kernel has no double backward; the math attention kernel for a Transformer; nothing for convolutions).
The forward steps run in that context too, so that a recomputed step runs the kernels (and draws the dropout masks)
of the step it recomputes. Step k's graph is either kept from the forward pass or recomputed from lambda_k with the
step's seed (one graph in memory at a time, a forward and a first backward more per reverse step): `step_graphs`
"recompute" (the default), "keep", or "auto", which keeps them when K - 1 more graphs of twice the size of the first's
saved tensors (counted while it is built) fit in half the memory still available. Measured on a 2-core CPU (MNIST
PixelCNN, batch 50, K = 20, fp32): "keep" needed more than 24 GiB; "auto" chose to recompute and took 41 s a step
against 32 s, the cost of building and measuring the first graph; where the graphs fit (small batches, a GPU's
memory) keeping them saves the recomputation (batch 8, K = 5: 1.06 s against 1.34 s a step).

On a GPU the products use the run's convolution precision (TF32 where PyTorch allows it, as in the rest of the
training step); unlike a difference quotient, an
exact product does not amplify that rounding.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Literal

import torch

from models.svi import Objective, SVITrace, UnrolledSVI, clip_norm, subtract

StepGraphs = Literal["auto", "keep", "recompute"]


def available_bytes(device: torch.device) -> int:
    """Memory the process could still take: free GPU memory plus what torch's allocator holds unused, or the
    operating system's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def counting_saved_bytes(total: list[int]) -> Iterator[None]:
    """Adds to total[0] the bytes of the tensors autograd saves inside (each storage once, parameters left out)."""
    seen: set[int] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if not isinstance(tensor, torch.nn.Parameter) and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total[0] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield


class ExactSVI(UnrolledSVI):
    """Double-backward products; step k's graph kept from the forward pass or recomputed (`step_graphs`)."""

    name = "exact"

    def __init__(self, *args, step_graphs: StepGraphs = "recompute", **kwargs):
        super().__init__(*args, **kwargs)
        self.step_graphs = step_graphs

    def differentiable_step(
        self, trace: SVITrace, mean: torch.Tensor, logvar: torch.Tensor, seed: int, objective: Objective
    ) -> list[torch.Tensor]:
        """The clipped gradient at (mean, logvar), with its graph, in the decoder's double-backward context."""
        with trace.double_backward():
            raw = self.raw_gradients(objective, mean, logvar, seed, create_graph=True)
            return [clip_norm(part, self.max_grad_norm) for part in raw]

    def keeps_graph(self, trace: SVITrace) -> bool:
        """Whether the next step's graph is kept: never with "recompute", nor once "auto" found the first too large."""
        return self.step_graphs != "recompute" and (not trace.records or trace.records[-1] is not None)

    def forward_step(
        self, trace: SVITrace | None, mean: torch.Tensor, logvar: torch.Tensor, seed: int, objective: Objective
    ) -> list[torch.Tensor]:
        """Records step k's graph (mean, logvar, clipped gradient), or None where the reverse pass recomputes it. A
        step the reverse pass will differentiate runs in the decoder's double-backward context either way, so that a
        recomputation runs the kernels (and draws the dropout masks) of the step it recomputes."""
        if trace is None:
            return super().forward_step(None, mean, logvar, seed, objective)
        if not self.keeps_graph(trace):
            trace.records.append(None)
            with trace.double_backward():
                return super().forward_step(None, mean, logvar, seed, objective)
        measuring, saved = self.step_graphs == "auto" and not trace.records, [0]
        with counting_saved_bytes(saved) if measuring else nullcontext():
            clipped = self.differentiable_step(trace, mean, logvar, seed, objective)
        # Saved tensors undercount what a graph holds (PixelCNN, batch 50: 787 MiB counted, about 1.3 GiB held).
        fits = not measuring or 2 * saved[0] * (self.steps - 1) <= available_bytes(mean.device) // 2
        trace.records.append((mean, logvar, clipped) if fits else None)
        return [part.detach() for part in clipped]

    def reverse_step(
        self, trace: SVITrace, k: int, vector: list[torch.Tensor], param_grads: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        record = trace.records[k]
        if record is None:
            mean, logvar = trace.means[k].detach().requires_grad_(), trace.logvars[k].detach().requires_grad_()
            clipped = self.differentiable_step(trace, mean, logvar, trace.seeds[k], trace.objective)
        else:
            mean, logvar, clipped = record
            trace.records[k] = None  # the graph is freed by the products below
        with trace.double_backward():
            products = torch.autograd.grad(
                clipped, (mean, logvar, *trace.params), vector, allow_unused=True, materialize_grads=True
            )
        subtract(param_grads, products[2:])
        return list(products[:2])
