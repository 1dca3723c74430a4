"""A PyTorch training script that shards its model with FSDP2, as its users write it, for the
tests: fully_shard over every process of the job (seg.world) when it runs several, a CNN with
dropout, the data from seg.dataloader, a learning-rate schedule, the loss logged per step."""

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import segtrain

seg = segtrain.session(total_steps=120)
world = seg.world

digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
y = torch.tensor(digits.target, dtype=torch.int64)
train = torch.utils.data.TensorDataset(x[:1500], y[:1500])
val_x, val_y = x[1500:], y[1500:]

model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3), nn.Linear(256, 10))
if world.world_size > 1:
    fully_shard(model, mesh=init_device_mesh("cpu", (world.world_size,)))
optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.5)

seg.track(model=model, optimizer=optimizer, schedule=schedule)
loader = seg.dataloader(train, batch_size=32)


def evaluate():
    model.eval()
    with torch.no_grad():
        return {"val_loss": nn.functional.cross_entropy(model(val_x), val_y).item()}


for step, (xb, yb) in seg.steps(loader, evaluate=evaluate):
    model.train()
    loss = nn.functional.cross_entropy(model(xb), yb)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    schedule.step()
    seg.log(loss=loss.detach())
