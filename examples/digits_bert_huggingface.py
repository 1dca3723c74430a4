"""A Hugging Face Trainer script, brought to the pipeline with a callback (lines marked "segtrain").

A tiny BERT built from its config (nothing is downloaded) classifies the handwritten digits, read
as sequences of 64 tokens (the pixels' 17 grey levels). Run by the pipeline with
``script: examples/digits_bert_huggingface.py``; alone, ``python examples/digits_bert_huggingface.py
--steps 200`` trains without checkpoints.
"""

import argparse

import torch
from sklearn.datasets import load_digits
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import segtrain.huggingface  # segtrain

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--steps", type=int, default=None, help="steps when run alone (the pipeline's config sets them)")
args = p.parse_args()

digits = load_digits()
tokens, labels = torch.tensor(digits.data, dtype=torch.int64), torch.tensor(digits.target)
train = [{"input_ids": tokens[i], "labels": labels[i]} for i in range(1500)]
val = [{"input_ids": tokens[i], "labels": labels[i]} for i in range(1500, len(labels))]

config = BertConfig(vocab_size=17, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                    max_position_embeddings=64, num_labels=10)
model = BertForSequenceClassification(config)

segtrain.session(total_steps=args.steps)  # segtrain: alone, how long to train
checkpoints = segtrain.huggingface.Checkpoints()  # segtrain
training = TrainingArguments(output_dir="hf-digits", max_steps=checkpoints.max_steps,  # segtrain: max_steps
                             save_strategy="no",  # segtrain: the pipeline saves
                             per_device_train_batch_size=32, learning_rate=args.lr, warmup_steps=50,
                             lr_scheduler_type="cosine", eval_strategy="steps", eval_steps=200, logging_steps=20,
                             report_to=[], seed=0, full_determinism=True, disable_tqdm=True)
trainer = Trainer(model=model, args=training, train_dataset=train, eval_dataset=val,
                  callbacks=[checkpoints])  # segtrain: callbacks
checkpoints.train(trainer)  # segtrain: was trainer.train()
