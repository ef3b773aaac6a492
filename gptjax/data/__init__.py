"""Training data: corpora as seqio Tasks/Mixtures, tokenised once into a cache and packed into rows.

- tasks.py: the registry of corpora (files, TFDS) and mixtures, and their seqio Tasks per vocabulary.
- cache.py: token streams cached as atomically written, memory-mapped .npy files.
- packing.py: rows, segment ids and positions from a token stream (how document boundaries are handled).
- sampling.py / dataset.py: the deterministic order of rows; `make_dataset` is the trainer's entry point.
"""

from gptjax.data.dataset import PackedDataset, make_dataset
from gptjax.data.tasks import components, get_task, register_mixture, register_text_task, register_tfds_task, task_names

__all__ = [
    "PackedDataset",
    "make_dataset",
    "components",
    "get_task",
    "register_mixture",
    "register_text_task",
    "register_tfds_task",
    "task_names",
]
