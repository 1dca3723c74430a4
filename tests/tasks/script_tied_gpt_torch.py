"""A GPT-style language model script as its authors write it, for the tests: the output layer is
the token embedding (tied weights, as in nanoGPT and GPT-2), the script sets up its own process
group the usual way (torch.distributed, before segtrain.session()) and wraps the model in
DistributedDataParallel right after the session, without asking seg.world. Each process masks
tokens with a generator of its own, seeded by its rank and tracked (per-rank state: a resume must
give every process its own generator back, not rank 0's)."""

import argparse
import os
import time

import torch
import torch.distributed as dist
from tiny_gpt import CONTEXT, VOCAB, TinyGPT  # model.py beside train.py, as in nanoGPT
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import segtrain

p = argparse.ArgumentParser()
p.add_argument("--pause", type=float, default=0.0, help="seconds to wait per step (the tests' kills need time)")
args = p.parse_args()

ddp = int(os.environ.get("RANK", -1)) != -1  # nanoGPT's test: started by torchrun
if ddp:
    dist.init_process_group(backend="gloo")  # what a torchrun script does first
rank = dist.get_rank() if ddp else 0

seg = segtrain.session(total_steps=120)


class TokenMask:
    """Replaces a few input tokens per step with a generator of this process's own."""

    def __init__(self, seed):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, idx):
        drop = torch.rand(idx.shape, generator=self.generator) < 0.1
        return torch.where(drop, torch.zeros_like(idx), idx)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


data = torch.randint(1, VOCAB, (512, CONTEXT + 1), generator=torch.Generator().manual_seed(0))
data[:, 1::2] = (data[:, 0::2][:, : data[:, 1::2].shape[1]] * 7) % VOCAB  # something to learn
train = torch.utils.data.TensorDataset(data[:448])
val = data[448:]

net = TinyGPT()
model = DistributedDataParallel(net) if ddp else net
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
mask = TokenMask(1000 + rank)
seg.track(model=model, optimizer=optimizer, mask=mask)
loader = seg.dataloader(train, batch_size=16)


def loss_of(module, inputs, targets):
    logits = module(inputs)
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def evaluate():
    net.eval()
    return {"val_loss": loss_of(net, val[:, :-1], val[:, 1:]).item()}


for step, (seq,) in seg.steps(loader, evaluate=evaluate):
    model.train()
    loss = loss_of(model, mask(seq[:, :-1]), seq[:, 1:])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    seg.log(loss=loss.detach())
    time.sleep(args.pause)
