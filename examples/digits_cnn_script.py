"""A plain PyTorch training script, brought to the pipeline with a few lines (marked "segtrain").

Run by the pipeline with ``script: examples/digits_cnn_script.py --lr 0.003`` in a run of the
config; alone, ``python examples/digits_cnn_script.py --steps 200`` trains without checkpoints.
The augmentation (a random shift) runs in the Dataset, in loader workers when --workers > 0.
"""

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import segtrain  # segtrain

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.003)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--workers", type=int, default=0)
p.add_argument("--steps", type=int, default=None, help="steps when run alone (the pipeline's config sets them)")
args = p.parse_args()


class Digits(torch.utils.data.Dataset):
    def __init__(self, images, labels, augment):
        self.x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
        self.y = torch.tensor(labels, dtype=torch.int64)
        self.augment = augment

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if self.augment:  # shift by up to one pixel: draws from torch's random stream
            dx, dy = torch.randint(-1, 2, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
        return x, self.y[i]


digits = load_digits()
train = Digits(digits.images[:1500], digits.target[:1500], augment=True)
val_x, val_y = Digits(digits.images[1500:], digits.target[1500:], augment=False)[:]

model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
    nn.Dropout(0.3), nn.Linear(32 * 16, 10),
)
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=500, gamma=0.5)


def evaluate():
    model.eval()
    logits = model(val_x)
    return {"val_loss": nn.functional.cross_entropy(logits, val_y).item(),
            "val_accuracy": (logits.argmax(1) == val_y).float().mean().item()}


seg = segtrain.session(total_steps=args.steps)  # segtrain
seg.track(model=model, optimizer=optimizer, scheduler=scheduler)  # segtrain
loader = seg.dataloader(train, batch_size=args.batch_size, num_workers=args.workers)  # segtrain

model.train()
for step, (x, y) in seg.steps(loader, evaluate=evaluate):  # segtrain: was `for x, y in loader`
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    seg.log(loss=loss.detach())  # segtrain
