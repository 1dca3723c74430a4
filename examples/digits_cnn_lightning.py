"""A Lightning script, brought to the pipeline with a callback (lines marked "segtrain").

Run by the pipeline with ``script: examples/digits_cnn_lightning.py``; alone,
``python examples/digits_cnn_lightning.py --steps 200`` trains without checkpoints. The step
count, the interval, the deadline and signal stops are exact; the data position after a resume is
Lightning's own (it restarts the epoch), so the result is close to, not bitwise equal to, an
uninterrupted run.
"""

import argparse

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch import nn

import segtrain.lightning  # segtrain

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.003)
p.add_argument("--steps", type=int, default=None, help="steps when run alone (the pipeline's config sets them)")
args = p.parse_args()


class DigitsData(L.LightningDataModule):
    def setup(self, stage=None):
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(d.target)
        self.train = torch.utils.data.TensorDataset(x[:1500], y[:1500])
        self.val = torch.utils.data.TensorDataset(x[1500:], y[1500:])

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train, batch_size=32, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.val, batch_size=256)


class DigitsCNN(L.LightningModule):
    def __init__(self, lr):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Dropout(0.3), nn.Linear(16 * 16, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, total_steps=self.trainer.estimated_stepping_batches)
        return [opt], [{"scheduler": sched, "interval": "step"}]


segtrain.session(total_steps=args.steps)  # segtrain: alone, how long to train
checkpoints = segtrain.lightning.Checkpoints()  # segtrain
trainer = L.Trainer(max_steps=checkpoints.max_steps, callbacks=[checkpoints],  # segtrain: max_steps, callbacks
                    devices=checkpoints.devices, num_nodes=checkpoints.num_nodes,  # segtrain: the run's processes
                    enable_checkpointing=False, logger=False, enable_progress_bar=False, accelerator="auto",
                    val_check_interval=200, check_val_every_n_epoch=None)
trainer.fit(DigitsCNN(args.lr), datamodule=DigitsData(), **checkpoints.resume)  # segtrain: **checkpoints.resume
