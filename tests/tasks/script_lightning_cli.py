"""A LightningCLI script for the tests, written as Lightning's docs write one (a LightningModule
and a LightningDataModule, both configured from the command line: --model.lr, --data.batch_size,
--trainer.val_check_interval), adopted with segtrain's lines: the Checkpoints callback and its
settings as the trainer's defaults, the training data from seg.dataloader (was a shuffled
DataLoader), LightningCLI(run=False) and fit with checkpoints.resume, and the config saved again
by every job (save_config_kwargs overwrite; without a logger it is the same file). LightningCLI seeds with its
default (seed_everything: the run's seed). --model.step_sleep slows each step."""

import time

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from sklearn.datasets import load_digits
from torch import nn

import segtrain
import segtrain.lightning


class DigitsModel(L.LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 0.05, step_sleep: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        if self.hparams.step_sleep:
            time.sleep(self.hparams.step_sleep)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return [opt], [{"scheduler": torch.optim.lr_scheduler.StepLR(opt, 150, 0.7), "interval": "step"}]


class DigitsData(L.LightningDataModule):
    def __init__(self, batch_size: int = 32):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage):
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target)
        self.train_set = torch.utils.data.TensorDataset(x[:1500], y[:1500])
        self.val_set = torch.utils.data.TensorDataset(x[1500:], y[1500:])

    def train_dataloader(self):  # was: DataLoader(self.train_set, batch_size=..., shuffle=True)
        return segtrain.session().dataloader(self.train_set, batch_size=self.batch_size)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.val_set, batch_size=128)


def cli_main():
    checkpoints = segtrain.lightning.Checkpoints()
    cli = LightningCLI(DigitsModel, DigitsData, run=False, trainer_defaults={
        "max_steps": checkpoints.max_steps, "callbacks": [checkpoints], "enable_checkpointing": False,
        "devices": checkpoints.devices, "num_nodes": checkpoints.num_nodes,
        "logger": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu",
        "deterministic": True}, save_config_kwargs={"overwrite": True})  # every segment's job writes it again
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, **checkpoints.resume)
    if checkpoints.finished:  # segtrain: code after fit runs at the end of every segment's job
        print(f"trained: validation loss {cli.trainer.validate(cli.model, datamodule=cli.datamodule)[0]['val_loss']:.4f}")


if __name__ == "__main__":
    cli_main()
