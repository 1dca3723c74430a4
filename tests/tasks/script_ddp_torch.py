"""A PyTorch training script as data-parallel users write it, for the tests: the model wrapped in
DistributedDataParallel when the job runs several processes (seg.world), a CNN with dropout (each
process draws from its own random streams), the data from seg.dataloader (each process gets its
share of every step's batch of --batch samples), the loss logged per step."""

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import segtrain

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.003)
p.add_argument("--batch", type=int, default=32)
args = p.parse_args()

seg = segtrain.session(total_steps=200)
world = seg.world  # this process among the job's (rank, world_size, is_main); its process group is ready

digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
y = torch.tensor(digits.target, dtype=torch.int64)
train = torch.utils.data.TensorDataset(x[:1500], y[:1500])
val_x, val_y = x[1500:], y[1500:]

net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3), nn.Linear(256, 10))
model = DistributedDataParallel(net) if world.world_size > 1 else net
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

seg.track(model=model, optimizer=optimizer)
loader = seg.dataloader(train, batch_size=args.batch)


def evaluate():
    net.eval()
    return {"val_loss": nn.functional.cross_entropy(net(val_x), val_y).item()}


for step, (xb, yb) in seg.steps(loader, evaluate=evaluate):
    model.train()
    loss = nn.functional.cross_entropy(model(xb), yb)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    seg.log(loss=loss.detach())
