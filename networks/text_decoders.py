"""Autoregressive decoders of text: `TextDecoder`, the base every text decoder shares, and the LSTM decoder.

Documents are padded token batches `<bos> w_1 .. w_n <eos> <pad>..`, their format (the special tokens' ids, the
longest document) given by the datamodule (`networks.contract.DataSpec`). A decoder models p(w_1 .. w_n <eos> | z) one
token at a time; the base turns its one method, `decode_steps` (logits for a run of input tokens, continuing from a
state), into teacher-forced logits, the log-likelihood with padding masked out, and sampling.
"""

from abc import abstractmethod
from contextlib import AbstractContextManager
from typing import Any

import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, PositiveInt
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn

from networks.contract import DataSpec
from networks.decoders import Decoder
from networks.distributions import categorical_log_prob
from networks.initialisation import init_uniform


class TextDecoder(Decoder):
    """Base of the text decoders: p(w_1 .. w_n <eos> | z) over padded token batches. Subclasses implement
    `decode_steps`; `max_length` is the most tokens of a document (its words and `<eos>`) a decoder can predict,
    None for any number: data with a longer document is refused when the decoder is built."""

    def __init__(self, data: DataSpec, latent_skip: bool, output_layer: int, max_length: int | None = None):
        super().__init__(latent_skip, output_layer)
        self.max_length = max_length
        self.vocab_size, text = data.text(type(self).__name__)
        self.pad_id, self.bos_id, self.eos_id = text["pad"], text["bos"], text["eos"]
        if max_length is not None and text["longest"] > max_length:
            raise MisconfigurationException(
                f"{type(self).__name__} predicts at most max_length={max_length} tokens of a document, and the data "
                f"holds one of {text['longest']} (its words and <eos>): raise max_length"
            )

    @abstractmethod
    def decode_steps(self, inputs: torch.Tensor, z: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """Logits (batch, time, vocab) of the token after each of `inputs` (batch, time) given z, continuing from
        `state` (what decoding the tokens before `inputs` left; None: `inputs` start with `<bos>`), and the state
        after `inputs`."""

    def forward(self, tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the logits of tokens[:, 1:] from tokens[:, :-1]."""
        return self.decode_steps(tokens[:, :-1], z)[0]

    def log_prob(self, tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p of every token after `<bos>` (the words and `<eos>`); `<pad>` positions count for nothing."""
        targets = tokens[:, 1:]
        return categorical_log_prob(self(tokens, z), targets, targets != self.pad_id)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, greedy: bool = False, max_length: int = 100) -> torch.Tensor:
        """Token by token from `<bos>` until every row has emitted `<eos>` (or `max_length` tokens after `<bos>`, at
        most the decoder's own `max_length`); pads after `<eos>`. One call of `decode_steps` per token, on the last
        token and the state."""
        if self.max_length is not None:
            max_length = min(max_length, self.max_length)
        batch = z.shape[0]
        tokens = torch.full((batch, 1), self.bos_id, dtype=torch.long, device=z.device)
        done = torch.zeros(batch, dtype=torch.bool, device=z.device)
        state = None
        for _ in range(max_length):
            logits, state = self.decode_steps(tokens[:, -1:], z, state)
            logits = logits[:, -1].float()
            step = logits.argmax(-1) if greedy else torch.multinomial(torch.softmax(logits, -1), 1).squeeze(1)
            step = torch.where(done, torch.full_like(step, self.pad_id), step)
            tokens = torch.cat([tokens, step.unsqueeze(1)], dim=1)
            done |= step == self.eos_id
            if bool(done.all()):
                break
        return tokens


class LSTMDecoder(TextDecoder):
    """LSTM language model p(w_1..w_n <eos> | z).

    In both models z is appended to every input embedding of layer 0, and the initial hidden state of the last LSTM
    layer is Linear(z) (the paper's code sets h0[-1] of its multi-layer LSTM; with one layer, that layer's); the skip
    model also feeds z into the input of every upper LSTM layer and into the output layer.
    """

    def __init__(
        self,
        data: DataSpec,
        latent_dim: int,
        latent_skip: bool,
        embedding_dim: PositiveInt = 512,
        hidden: PositiveInt = 1024,
        num_layers: PositiveInt = 1,
        dropout: ClosedUnitInterval = 0.5,
        init_range: NonNegativeFloat = 0.1,
    ):
        """The defaults are the paper code's text decoder: embedding 512, one LSTM layer of 1024 units, dropout 0.5 on
        the embeddings and the LSTM outputs (never on z), every parameter U(-0.1, 0.1)."""
        super().__init__(data, latent_skip, output_layer=num_layers)
        self.num_layers = num_layers
        self.embedding = nn.Embedding(self.vocab_size, embedding_dim, padding_idx=self.pad_id)
        self.dropout = nn.Dropout(dropout)
        self.initial_hidden = nn.Linear(latent_dim, hidden)
        self.lstms = nn.ModuleList(
            nn.LSTM((hidden if i else embedding_dim) + self.latent_width(i, latent_dim), hidden, batch_first=True)
            for i in range(num_layers)
        )
        self.output = nn.Linear(hidden + self.latent_width(num_layers, latent_dim), self.vocab_size)
        init_uniform(self, init_range)

    def double_backward_context(self) -> AbstractContextManager:
        """cuDNN off: its LSTM kernel has no double backward (PyTorch's own LSTM cells have)."""
        return torch.backends.cudnn.flags(enabled=False)

    def decode_steps(self, inputs: torch.Tensor, z: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """The state is each LSTM layer's (h, c)."""
        z_steps = z.unsqueeze(1).expand(-1, inputs.shape[1], -1)

        def with_latent(layer: int, h: torch.Tensor) -> torch.Tensor:
            return torch.cat([h, z_steps.to(h.dtype)], dim=-1) if self.takes_latent(layer) else h

        h = self.dropout(self.embedding(inputs))
        if state is None:
            h0 = self.initial_hidden(z).unsqueeze(0)
            state = [None] * (self.num_layers - 1) + [(h0, torch.zeros_like(h0))]
        new_state = []
        for i, lstm in enumerate(self.lstms):
            h, layer_state = lstm(with_latent(i, h), state[i])
            new_state.append(layer_state)
        return self.output(with_latent(self.num_layers, self.dropout(h))), new_state
