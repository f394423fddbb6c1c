"""Training-step cost of the text decoders: the Transformer against the LSTM, VAE and SkipVAE, at the sizes of the CPU
stand-in (`configs/presets/yahoo_small.yaml`) and of the paper's text model.

Prints, from one run: for each size and model, the parameter count of the decoder (and of the whole model) and the
median time of a full training step (forward, backward, gradient clipping, the experiment's optimizer: SGD lr 1 for
the LSTM, Adam for the Transformer) on batches of 32 documents of a 20,000-word vocabulary, each batch of about one
length as the datamodule buckets them, 10 to 150 words (Yahoo's mean is about 80). The steps of the models of one
size alternate, so the machine's drift hits them alike; then each Transformer's step as a multiple of the LSTM's of
the same model and size.

    python benchmarks/text_step_cost.py [--steps 10] [--sizes stand-in paper] [--transformer-embedding 192]
                                        [--transformer-hidden 768]

Sizes: the stand-in's LSTM networks (embedding 128, hidden 256) against the Transformer of `transformer_cpu` (width
192, MLP 768: about the LSTM decoder's parameter count); the paper's (512, 1024) against the Transformer part (512,
MLP 2048).
"""

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MODELS, synchronize  # noqa: E402
from networks.encoders import LSTMEncoder  # noqa: E402
from networks.text_decoders import LSTMDecoder  # noqa: E402
from networks.transformer_decoder import TransformerDecoder  # noqa: E402
from runtime.run_setup import keep_freed_memory  # noqa: E402

VOCABULARY, BATCH, LATENT = 20_000, 32, 32
TEXT_FORMAT = {"pad": 0, "bos": 1, "eos": 2, "longest": 201}
# (embedding, hidden) of the LSTM networks and of the Transformer decoder (its width and MLP width): the stand-in's
# (yahoo_small; the Transformer as the transformer_cpu study sizes it) and the paper code's (the Transformer of
# configs/parts/transformer_decoder.yaml).
SIZES = {"stand-in": ((128, 256), (192, 768)), "paper": ((512, 1024), (512, 2048))}


def documents(seed: int) -> torch.Tensor:
    """A batch as the text datamodule makes them, of documents of about one length (bucketed): `<bos> words <eos>`,
    the batch's length drawn from 10 to 150 words (Yahoo's mean is about 80), each document up to 4 words shorter."""
    generator = torch.Generator().manual_seed(seed)
    longest = int(torch.randint(10, 151, (), generator=generator))
    lengths = longest - torch.randint(0, 5, (BATCH,), generator=generator)
    tokens = torch.zeros(BATCH, longest + 2, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        tokens[row, 0] = 1
        tokens[row, 1 : length + 1] = torch.randint(3, VOCABULARY, (length,), generator=generator)
        tokens[row, length + 1] = 2
    return tokens


def models(size: str, transformer: tuple[int | None, int | None]) -> dict[str, tuple]:
    """(model, optimizer) for the LSTM and the Transformer decoder (2 blocks, 8 heads) of each model class at `size`;
    the Transformer's widths as given, else those of `SIZES`."""
    (embedding, hidden), (width, mlp) = SIZES[size]
    width, mlp = transformer[0] or width, transformer[1] or mlp
    encoder = partial(LSTMEncoder, embedding_dim=embedding, hidden=hidden)
    decoders = {
        "LSTM": (partial(LSTMDecoder, embedding_dim=embedding, hidden=hidden), partial(torch.optim.SGD, lr=1.0)),
        "Transformer": (
            partial(TransformerDecoder, embedding_dim=width, hidden=mlp, num_layers=2, heads=8),
            partial(torch.optim.Adam, lr=5e-4),
        ),
    }
    built = {}
    for model_name, model_class in MODELS.items():
        for decoder_name, (decoder, optimizer) in decoders.items():
            torch.manual_seed(0)
            model = model_class(
                encoder=encoder, decoder=decoder, data_dims=[VOCABULARY], text_format=TEXT_FORMAT, latent_dim=LATENT
            )
            built[f"{model_name} {decoder_name}"] = (model, optimizer(model.parameters()))
    return built


def train_step(model, optimizer, tokens) -> None:
    out = model(tokens)
    loss = (out["recon"] + out["kl"]).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()


def count(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each model (after 2 warm-up steps)")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--transformer-embedding", type=int, help="the Transformer's width (default: SIZES)")
    parser.add_argument("--transformer-hidden", type=int, help="the Transformer's MLP width (default: SIZES)")
    args = parser.parse_args()
    keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, vocabulary {VOCABULARY}, fp32")
    batches = [documents(seed) for seed in range(args.steps + 2)]
    for size in args.sizes:
        built = models(size, (args.transformer_embedding, args.transformer_hidden))
        times: dict[str, list[float]] = {name: [] for name in built}
        for step, tokens in enumerate(batches):
            for name, (model, optimizer) in built.items():  # the models of one size alternate
                synchronize(torch.device("cpu"))
                start = time.perf_counter()
                train_step(model, optimizer, tokens)
                if step >= 2:
                    times[name].append(time.perf_counter() - start)
        (embedding, hidden), (width, mlp) = SIZES[size]
        width, mlp = args.transformer_embedding or width, args.transformer_hidden or mlp
        print(f"\n{size} (LSTM embedding {embedding}, hidden {hidden}; Transformer width {width}, MLP {mlp}):")
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, (model, _) in built.items():
            print(
                f"  {name:22s} decoder {count(model.decoder):5.2f} M parameters (model {count(model):5.2f} M), "
                f"{medians[name] * 1000:7.1f} ms/step"
            )
        for model_name in MODELS:
            ratio = medians[f"{model_name} Transformer"] / medians[f"{model_name} LSTM"]
            print(f"  {model_name}: the Transformer's step is {ratio:.2f} x the LSTM's")


if __name__ == "__main__":
    main()
