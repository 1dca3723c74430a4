"""A Hugging Face Trainer script for the tests, as the text-classification guide writes one: a tiny
BERT (built from its config, nothing is downloaded) classifying the digits, read as 64 tokens of
17 grey levels, evaluated every epoch with compute_metrics, logging at the Trainer's default
logging_steps; checkpointed and stopped by segtrain.huggingface.Checkpoints. --step-sleep slows
each step."""

import argparse
import time

import torch
from sklearn.datasets import load_digits
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

import segtrain.huggingface

p = argparse.ArgumentParser()
p.add_argument("--step-sleep", type=float, default=0.0)
p.add_argument("--steps", type=int, default=None)
p.add_argument("--epochs", type=int, default=None, help="num_train_epochs give the run's length")
args = p.parse_args()


class Digits(torch.utils.data.Dataset):
    def __init__(self, lo, hi):
        d = load_digits()
        self.tokens = torch.tensor(d.data[lo:hi], dtype=torch.int64)  # grey levels 0..16 as tokens
        self.labels = torch.tensor(d.target[lo:hi], dtype=torch.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "labels": self.labels[i]}


class Slow(TrainerCallback):
    def on_step_end(self, args_, state, control, **kwargs):
        if args.step_sleep:
            time.sleep(args.step_sleep)


segtrain.session(total_steps=args.steps)
checkpoints = segtrain.huggingface.Checkpoints()
config = BertConfig(vocab_size=17, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=64, num_labels=10)
model = BertForSequenceClassification(config)
length = {"num_train_epochs": args.epochs} if args.epochs else {"max_steps": checkpoints.max_steps}
training = TrainingArguments(output_dir="hf-out", **length, per_device_train_batch_size=32,
                             learning_rate=1e-3, warmup_steps=20, lr_scheduler_type="linear", save_strategy="no",
                             eval_strategy="epoch", per_device_eval_batch_size=128, report_to=[], use_cpu=True,
                             seed=0, data_seed=0, full_determinism=True, disable_tqdm=True, dataloader_drop_last=True)


def compute_metrics(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


trainer = Trainer(model=model, args=training, train_dataset=Digits(0, 1500), eval_dataset=Digits(1500, 1797),
                  compute_metrics=compute_metrics, callbacks=[checkpoints, Slow()])
checkpoints.train(trainer)
