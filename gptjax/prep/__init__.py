"""Data preparation in GPT-3's manner (Brown et al. 2020, section 2.2 and Appendices A and C), as the
`gptjax data` commands; each writes a prepared corpus directory (gptjax.rundir.CorpusDir) that training
names directly in `data.task`, alone or in a mixture with explicit rates (gptjax.data.tasks).

- corpus.py: documents streamed from text / JSONL files (local or gs://), errors by file and line, atomic
  outputs (decide first, then write).
- quality.py: the hashed n-gram logistic-regression classifier and the Pareto keep rule (`filter`).
- dedup.py: exact and MinHash-LSH fuzzy deduplication with duplicate clusters (`dedup`).
- contamination.py: n-gram overlap with eval documents given as texts, dirty ids per task, GPT-3's cut of
  the corpus (`decontaminate`).
- stats.py: corpus counts (`stats`). cli.py: the commands.

Separate from gptjax.data, whose import brings TensorFlow and seqio (~8 s), which none of this needs.
"""
