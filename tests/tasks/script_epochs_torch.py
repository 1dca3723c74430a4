"""An epoch-shaped PyTorch script for the tests, as PyTorch's MNIST example writes one: train(epoch)
and test() per epoch, StepLR stepped per epoch, dropout; adopted with seg.epochs(loader) and
seg.batches() (the lines marked "segtrain"). --step-sleep slows each step."""

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.optim.lr_scheduler import StepLR

import segtrain  # segtrain

p = argparse.ArgumentParser()
p.add_argument("--batch-size", type=int, default=50)
p.add_argument("--lr", type=float, default=1.0)
p.add_argument("--gamma", type=float, default=0.7)
p.add_argument("--step-sleep", type=float, default=0.0)
args = p.parse_args()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, 1)
        self.dropout = nn.Dropout(0.25)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = self.dropout(torch.flatten(x, 1))
        return F.log_softmax(self.fc(x), dim=1)


def train(model, optimizer, epoch):
    model.train()
    for batch_idx, (data, target) in enumerate(seg.batches()):  # segtrain: was enumerate(train_loader)
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
        seg.log(loss=loss.detach())  # segtrain: was a print every log_interval
        if args.step_sleep:
            time.sleep(args.step_sleep)


def test(model):
    model.eval()
    with torch.no_grad():
        output = model(test_x)
        loss = F.nll_loss(output, test_y, reduction="sum").item() / len(test_y)
        correct = (output.argmax(dim=1) == test_y).sum().item()
    return {"val_loss": loss, "val_accuracy": correct / len(test_y)}


digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
y = torch.tensor(digits.target, dtype=torch.int64)
train_set = torch.utils.data.TensorDataset(x[:1500], y[:1500])
test_x, test_y = x[1500:], y[1500:]

torch.manual_seed(1)
model = Net()
optimizer = torch.optim.Adadelta(model.parameters(), lr=args.lr)
scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)

seg = segtrain.session()  # segtrain
seg.track(model=model, optimizer=optimizer, scheduler=scheduler)  # segtrain
train_loader = seg.dataloader(train_set, batch_size=args.batch_size)  # segtrain: was DataLoader(..., shuffle=True)
for epoch in seg.epochs(train_loader):  # segtrain: was range(1, args.epochs + 1)
    train(model, optimizer, epoch)
    seg.log(**test(model))  # segtrain: was test(model, device, test_loader), which printed
    scheduler.step()
