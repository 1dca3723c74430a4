"""A GPT-style language model in miniature (script_tied_gpt_torch.py trains it): the output layer
shares its weight with the token embedding, as nanoGPT's and GPT-2's do."""

import torch
from torch import nn

VOCAB, CONTEXT, WIDTH = 48, 16, 32


class TinyGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.wpe = nn.Embedding(CONTEXT, WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, 2, batch_first=True, dropout=0.1)
        self.mlp = nn.Sequential(nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(), nn.Linear(2 * WIDTH, WIDTH))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.register_buffer("causal", torch.triu(torch.ones(CONTEXT, CONTEXT, dtype=torch.bool), 1))

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        a, _ = self.attn(x, x, x, attn_mask=self.causal[: idx.shape[1], : idx.shape[1]], need_weights=False)
        x = x + a
        x = x + self.mlp(x)
        return self.lm_head(self.ln_f(x))
