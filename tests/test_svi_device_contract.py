"""What SA-VAE's SVI asks of a GPU: no value read back to the host inside the steps (a read stalls the device's queue
once per read), and cuDNN turned off only where a network's double backward needs it (the LSTM), not for the
PixelCNN's convolutions, whose double backward runs on cuDNN."""

import pytest
import torch
from test_svi import example_batch, small_model
from torch.utils._python_dispatch import TorchDispatchMode

from models import VAE, SkipVAE

HOST_READS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.item")
MODES = [("exact", "keep"), ("exact", "recompute"), ("finite_difference", "auto"), ("official", "auto")]


class Dispatched(TorchDispatchMode):
    """Every aten operation dispatched inside, with whether cuDNN was enabled at the time."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func.overloadpacket), torch.backends.cudnn.enabled))
        return func(*args, **(kwargs or {}))


def watched(svi, mode: TorchDispatchMode, phase: list[str]) -> None:
    """Run the SVI's `refine` and `backward` under `mode`, naming the phase in `phase[0]`."""
    for name in ("refine", "backward"):
        method = getattr(svi, name)

        def run(*args, _method=method, _name=name, **kwargs):
            phase[0] = _name
            with mode:
                result = _method(*args, **kwargs)
            phase[0] = ""
            return result

        setattr(svi, name, run)


@pytest.mark.parametrize("architecture", ["pixelcnn", "lstm", "mlp"])
@pytest.mark.parametrize("hessian_products, step_graphs", MODES)
def test_no_value_is_read_back_to_the_host_inside_the_svi(architecture, hessian_products, step_graphs):
    """With every clip active (max_grad_norm 0.05), in training and in evaluation."""
    model = small_model(
        SkipVAE, architecture, steps=3, max_grad_norm=0.05, hessian_products=hessian_products, step_graphs=step_graphs
    )
    dispatched, phase = Dispatched(), [""]
    watched(model.refinement.svi, dispatched, phase)
    x = example_batch(architecture)
    surrogate, _ = model.refinement.training_loss(model, x, beta=0.7)
    surrogate.backward()
    model.eval()
    model.evaluate({"x": x, "index": torch.arange(len(x))})
    ops = [op for op, _ in dispatched.calls]
    assert len(ops) > 100  # the counter saw the steps
    assert [op for op in ops if op in HOST_READS] == []


def test_the_pixelcnn_reverse_pass_keeps_cudnn_on():
    """Every convolution of the exact reverse pass (recomputed steps, double backward), and of the forward steps
    whose graphs it keeps, runs with cuDNN enabled."""
    for step_graphs in ("keep", "recompute"):
        model = small_model(VAE, "pixelcnn", steps=3, hessian_products="exact", step_graphs=step_graphs)
        dispatched, phase = Dispatched(), [""]
        watched(model.refinement.svi, dispatched, phase)
        model.refinement.training_loss(model, example_batch("pixelcnn"), beta=0.7)
        convolutions = [enabled for op, enabled in dispatched.calls if op.startswith("aten.convolution")]
        assert len(convolutions) > 10 and all(convolutions), step_graphs
        assert "aten.convolution_backward" in {op for op, _ in dispatched.calls}


def test_the_lstm_reverse_pass_turns_cudnn_off():
    """cuDNN's LSTM has no double backward: every LSTM call of the SVI's steps in training (the forward steps, whose
    graphs the reverse pass keeps or recomputes, and the recomputations) runs with cuDNN disabled, and only those:
    not the loss at the refined posterior, nor an evaluation's steps."""
    for step_graphs in ("recompute", "keep"):
        model = small_model(VAE, "lstm", steps=3, hessian_products="exact", step_graphs=step_graphs)
        dispatched, phase, calls = Dispatched(), [""], []
        watched(model.refinement.svi, dispatched, phase)

        def record(*_, phase=phase, calls=calls):
            calls.append((phase[0], torch.backends.cudnn.enabled))

        for lstm in model.decoder.lstms:
            lstm.register_forward_pre_hook(record)
        tokens = example_batch("lstm")
        model.refinement.training_loss(model, tokens, beta=0.7)
        phases = {where for where, _ in calls}
        assert phases == {"refine", "backward", ""} if step_graphs == "recompute" else {"refine", ""}
        for where, enabled in calls:
            assert enabled == (where == ""), (step_graphs, where)
        calls.clear()
        model.eval()
        model.evaluate({"x": tokens, "index": torch.arange(len(tokens))})
        assert calls and all(enabled for _, enabled in calls)
        assert torch.backends.cudnn.enabled
