"""A causal Transformer decoder of text with z in every layer: Skip-VAE's question asked of today's text decoder.

The decoder is a stack of pre-norm blocks (causal self-attention, then an MLP, each added to the residual stream)
numbered 0..L-1, then the output layer L (a final LayerNorm and the linear map to the vocabulary). Where z enters is
decided, as for every decoder, by `Decoder.takes_latent(layer)`; z enters a layer as a linear projection of its own
(`latent["<layer>"]`) added to that layer's input at every position:

- VAE: z enters block 0 only, added to the token and position embeddings: the blocks above and the output layer
  see z only through what block 0 passed up the residual stream.
- SkipVAE: every block adds its own projection of z to the residual stream it reads, and the output layer adds one to
  the final hidden state before the vocabulary map. This is the Skip-VAE definition (Dieng et al., 2019: z is an input
  of every layer of the decoder, each with its own weights) applied to a Transformer: a block's input is the residual
  stream, so that is where z goes, and no block can lose it on the way up.

The other common injection, z as an extra attention memory slot (Optimus, Li et al., 2020), is the setting
`latent_as: memory`: a block that takes z attends to one more key/value pair, a projection of z, which every position
sees; the output layer, which has no attention, still adds its projection. Dropout is never applied to z's
contributions. Sampling keeps each block's keys and values (a cache), so a token costs one position's work.
"""

import math
from contextlib import AbstractContextManager
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from jsonargparse.typing import ClosedUnitInterval, PositiveFloat, PositiveInt
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from networks.contract import DataSpec
from networks.text_decoders import TextDecoder

KeysValues = tuple[torch.Tensor, torch.Tensor]  # (batch, heads, positions, head width) each


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which a position sees itself and the positions before it (and a memory slot,
    when given), by PyTorch's `scaled_dot_product_attention`."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.projection = nn.Linear(width, width)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, positions, width) -> (batch, heads, positions, head width)."""
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, cache: KeysValues | None, memory: KeysValues | None
    ) -> tuple[torch.Tensor, KeysValues]:
        """The attention output for the positions of `x`, which follow the ones whose keys and values `cache` holds
        (the memory slot's first, when there is one); and the cache extended by `x`'s."""
        q, k, v = (self.split(part) for part in self.qkv(x).chunk(3, dim=-1))
        if cache is None and memory is not None:
            cache = (self.split(memory[0]), self.split(memory[1]))
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        new, known = q.shape[2], k.shape[2]
        # Query i (of the `new` positions) sees the keys up to its own position: the first known - new + i + 1.
        causal, mask = new == known, None
        if 1 < new < known:
            mask = torch.ones(new, known, dtype=torch.bool, device=x.device).tril(known - new)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        return self.projection(out.transpose(1, 2).reshape(x.shape)), (k, v)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attention(LN(x)), then + MLP(LN(x)), dropout on both branches."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.attention_norm, self.mlp_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, cache: KeysValues | None, memory: KeysValues | None
    ) -> tuple[torch.Tensor, KeysValues]:
        attended, cache = self.attention(self.attention_norm(x), cache, memory)
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.mlp_norm(x))), cache


class TransformerDecoder(TextDecoder):
    """Causal Transformer language model p(w_1..w_n <eos> | z): token and learnt position embeddings, `num_layers`
    pre-norm blocks, a final LayerNorm and the output layer over the vocabulary; z enters as the module docstring says.
    Its sizes have the names of the LSTM decoder's (`embedding_dim`, `hidden`, `num_layers`, `dropout`), so a preset
    that sizes the text networks (`configs/presets/yahoo_small.yaml`) sizes it too."""

    def __init__(
        self,
        data: DataSpec,
        latent_dim: int,
        latent_skip: bool,
        embedding_dim: PositiveInt = 512,
        hidden: PositiveInt = 2048,
        num_layers: PositiveInt = 2,
        heads: PositiveInt = 8,
        dropout: ClosedUnitInterval = 0.1,
        max_length: PositiveInt = 256,
        latent_as: Literal["input", "memory"] = "input",
        init_std: PositiveFloat = 0.02,
    ):
        """
        Args:
            embedding_dim: the width of the embeddings and of the residual stream; a multiple of `heads`.
            hidden: the width of each block's MLP.
            num_layers: Transformer blocks.
            heads: attention heads.
            dropout: on the embeddings, the attention weights and both residual branches (never on z).
            max_length: the most tokens of a document the decoder predicts (its words and `<eos>`): the positions it
                has embeddings for; data with a longer document is refused when the decoder is built.
            latent_as: "input" (z's projection added to a layer's input) or "memory" (an extra key/value slot of a
                block's attention; the output layer still adds it).
            init_std: the standard deviation of every weight and embedding at initialisation (GPT-2's 0.02; the
                residual branches' output maps divided by sqrt(2 x num_layers)); biases 0, LayerNorms the identity.
        """
        super().__init__(data, latent_skip, output_layer=num_layers, max_length=max_length)
        width = embedding_dim
        if width % heads:
            raise MisconfigurationException(
                f"TransformerDecoder: embedding_dim {width} is not a multiple of heads {heads}"
            )
        self.num_layers, self.width, self.latent_as = num_layers, width, latent_as
        self.token_embedding = nn.Embedding(self.vocab_size, width, padding_idx=self.pad_id)
        self.position_embedding = nn.Embedding(max_length, width)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, hidden, dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, self.vocab_size)

        def latent_width(layer: int) -> int:  # a memory slot needs a key and a value
            return 2 * width if latent_as == "memory" and layer < num_layers else width

        self.latent = nn.ModuleDict(
            {str(i): nn.Linear(latent_dim, latent_width(i)) for i in range(num_layers + 1) if self.takes_latent(i)}
        )
        self.initialise(init_std)

    def initialise(self, std: float) -> None:
        """GPT-2's scheme: weights and embeddings N(0, std), the residual branches' output maps N(0, std /
        sqrt(2 num_layers)), biases 0, LayerNorms the identity (PyTorch's)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in cast(list[Block], list(self.blocks)):
            for branch_output in (block.attention.projection, cast(nn.Linear, block.mlp[-1])):
                nn.init.normal_(branch_output.weight, 0.0, std / math.sqrt(2 * self.num_layers))

    def double_backward_context(self) -> AbstractContextManager:
        """Attention on PyTorch's math kernel: the fused attention kernels have no double backward."""
        return sdpa_kernel(SDPBackend.MATH)

    def decode_steps(self, inputs: torch.Tensor, z: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """The state is the position reached and each block's keys and values."""
        start = 0 if state is None else state["position"]
        caches = [None] * self.num_layers if state is None else state["caches"]
        end = start + inputs.shape[1]
        if end > self.position_embedding.num_embeddings:
            raise MisconfigurationException(
                f"TransformerDecoder predicts at most max_length={self.position_embedding.num_embeddings} tokens of a "
                f"document; this one needs {end}: raise model.init_args.decoder.init_args.max_length"
            )
        positions = torch.arange(start, end, device=inputs.device)
        h = self.dropout(self.token_embedding(inputs) + self.position_embedding(positions))
        for i, block in enumerate(cast(list[Block], list(self.blocks))):
            memory = None
            if self.takes_latent(i):
                projected = self.latent[str(i)](z).unsqueeze(1).to(h.dtype)
                if self.latent_as == "memory":
                    memory = (projected[..., : self.width], projected[..., self.width :])
                else:
                    h = h + projected
            h, caches[i] = block(h, caches[i], memory)
        h = self.final_norm(h)
        if self.takes_latent(self.num_layers):
            h = h + self.latent[str(self.num_layers)](z).unsqueeze(1).to(h.dtype)
        return self.output(h), {"position": end, "caches": caches}
