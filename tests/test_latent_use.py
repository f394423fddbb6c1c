"""experiments.latent_use: the reconstruction term at four codes and the KL split, and its command line."""

import pytest
import torch
from helpers import tiny

from experiments.latent_use import latent_use, main
from models import VAE


class TinyImages:
    """Two test batches of binary 4x4 images, as a data module hands them out."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.bernoulli(torch.full((12, 1, 4, 4), 0.3), generator=generator)

    def test_dataloader(self):
        return [{"x": self.x[i : i + 6], "index": torch.arange(i, i + 6)} for i in (0, 6)]

    def on_after_batch_transfer(self, batch, dataloader_idx):
        return batch


def tiny_vae() -> VAE:
    return tiny(data_dims=[1, 4, 4]).eval()


def test_a_decoder_that_ignores_z_reconstructs_equally_from_every_code():
    model = tiny_vae()
    with torch.no_grad():
        model.decoder.input.weight.zero_()  # the VAE's only path from z
    values = latent_use(model, TinyImages())
    recon = [values[f"recon at {code}"] for code in ("z ~ q", "z = mean", "z = average mean", "z = 0")]
    assert max(recon) - min(recon) < 1e-9 and values["examples"] == 12


def test_recon_at_z_from_q_is_the_test_steps_term_and_max_examples_cuts():
    model, data = tiny_vae(), TinyImages()
    values = latent_use(model, data)
    with torch.no_grad():
        steps = [model.evaluate(batch)["recon"] for batch in data.test_dataloader()]
    assert values["recon at z ~ q"] == pytest.approx(float(torch.cat(steps).mean()), rel=1e-6)
    assert values["recon at z = mean"] != values["recon at z = 0"]
    assert latent_use(model, data, max_examples=5)["examples"] == 5


@pytest.mark.integration
def test_command_line_on_a_training_run(tmp_path, capsys, debug_run):
    run = debug_run
    assert main([str(run), "--max-examples", "40", "--json", str(tmp_path / "use.json")]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith(f"| {run} |"))
    assert len(row.split("|")) == 2 + 9 and "| 40 |" in row
    assert (tmp_path / "use.json").exists()
    assert main([str(tmp_path)]) == 1
    assert "holds no config.yaml" in capsys.readouterr().err
