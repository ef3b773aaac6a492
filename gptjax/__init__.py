"""gptjax: GPT-family language models in JAX/Flax for scaling and in-context-learning research.

Submodules are imported lazily by their users so that `gptjax --help` stays fast.
"""

__version__ = "0.1.0"
