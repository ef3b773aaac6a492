"""GPT-1's supervised fine-tuning (Radford et al. 2018, §3.2-3.3) as a gptjax run.

- transforms.py: the task input transformations and the start/delimiter/extract tokens.
- tasks.py: the tasks on real benchmark files, each with its kind of head.
- objective.py: extended parameters (new token rows + a linear head) and the loss L2 + λ·L1, plugged into
  the trainer's one step as a `train.Objective`.
- run.py: the dataset of labelled examples, building and running the Trainer, validation accuracy,
  and `gptjax finetune`.
"""
