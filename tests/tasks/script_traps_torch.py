"""script_digits_torch.py with traps for the resume check (that script stays as it was: the
compatibility fixture's checkpoints were written by it). A plain PyTorch training script for the
tests: an MLP with dropout on the digits, its loop
handed to segtrain.session(). --step-sleep slows each step (kills land where a test wants them,
the result does not change); --own-loader uses a torch DataLoader instead of seg.dataloader;
--break-at leaves the loop early (a script bug the job must report); --exit-at ends the process
with os._exit(0) at that step (a script that quits by itself). Traps for the resume check (each
breaks an exact resume the way real scripts do): --draw-before-loop (nanoGPT's get_batch: the
first batch drawn before seg.steps(), each next one at the end of a step), --step-counter (the
learning rate from a counter of the script's own), --untracked-module (a trained module with
dropout that seg.track does not name)."""

import argparse
import os
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

import segtrain

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.05)
p.add_argument("--step-sleep", type=float, default=0.0)
p.add_argument("--own-loader", action="store_true")
p.add_argument("--workers", type=int, default=0)
p.add_argument("--break-at", type=int, default=0)
p.add_argument("--exit-at", type=int, default=0)
p.add_argument("--steps", type=int, default=None)
p.add_argument("--draw-before-loop", action="store_true")
p.add_argument("--step-counter", action="store_true")
p.add_argument("--untracked-module", action="store_true")
args = p.parse_args()

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target, dtype=torch.int64)
train = torch.utils.data.TensorDataset(x[:1500], y[:1500])
val_x, val_y = x[1500:], y[1500:]

model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
head = nn.Sequential(nn.Dropout(0.3), nn.Linear(10, 10)) if args.untracked_module else None  # trained, not tracked
trained = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
optimizer = torch.optim.SGD(trained, lr=args.lr, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=150, gamma=0.7)

seg = segtrain.session(total_steps=args.steps)
seg.track(model=model, optimizer=optimizer, scheduler=scheduler)
if args.own_loader:
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, drop_last=True)
else:
    loader = seg.dataloader(train, batch_size=32, num_workers=args.workers)


def evaluate():
    model.eval()
    return {"val_loss": nn.functional.cross_entropy(model(val_x), val_y).item()}




def get_batch():
    ix = torch.randint(1500, (32,))
    return x[ix], y[ix]


if args.draw_before_loop:
    import itertools

    loader = itertools.repeat(None)
    pending = get_batch()
counter = 0
for step, batch in seg.steps(loader, evaluate=evaluate):
    model.train()
    if args.draw_before_loop:
        (xb, yb), pending = pending, get_batch()
    else:
        xb, yb = batch
    if args.step_counter:
        counter += 1
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.99 ** counter
    out = head(model(xb)) if head is not None else model(xb)
    loss = nn.functional.cross_entropy(out, yb)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    seg.log(loss=loss.detach())
    if args.step_sleep:
        time.sleep(args.step_sleep)
    if step == args.break_at:
        break
    if step == args.exit_at:
        os._exit(0)
