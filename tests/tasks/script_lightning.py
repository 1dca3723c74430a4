"""A Lightning Trainer script for the tests: an MLP with dropout on the digits, its training data
from seg.dataloader (stateful: an exact resume), a validation loader logging val_loss,
checkpointed and stopped by segtrain.lightning.Checkpoints. --step-sleep slows each step."""

import argparse
import time

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch import nn

import segtrain.lightning

p = argparse.ArgumentParser()
p.add_argument("--step-sleep", type=float, default=0.0)
p.add_argument("--steps", type=int, default=None)
p.add_argument("--epochs", type=int, default=None, help="the Trainer's max_epochs give the run's length")
p.add_argument("--max-epochs", type=int, default=None, help="a max_epochs beside max_steps=checkpoints.max_steps")
args = p.parse_args()


class Digits(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        if args.step_sleep:
            time.sleep(args.step_sleep)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return [opt], [{"scheduler": torch.optim.lr_scheduler.StepLR(opt, 150, 0.7), "interval": "step"}]


digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[1500:], y[1500:]), batch_size=128)

seg = segtrain.session(total_steps=args.steps)
# seg.dataloader: a stateful loader in the run's seeded order (was a shuffled DataLoader)
train = seg.dataloader(torch.utils.data.TensorDataset(x[:1500], y[:1500]), batch_size=32)
checkpoints = segtrain.lightning.Checkpoints()
length = {"max_epochs": args.epochs} if args.epochs else {"max_steps": checkpoints.max_steps, "max_epochs": args.max_epochs}
trainer = L.Trainer(**length, callbacks=[checkpoints], enable_checkpointing=False,
                    logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                    devices=checkpoints.devices, num_nodes=checkpoints.num_nodes, deterministic=True,
                    val_check_interval=100, check_val_every_n_epoch=None)
trainer.fit(Digits(), train, val, **checkpoints.resume)
