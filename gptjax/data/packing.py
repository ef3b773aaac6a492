"""Packing a token stream into fixed-length training rows with per-document segments.

The stream is every document's tokens followed by the vocabulary's end-of-text id (EOS), documents back
to back: `d1 EOS d2 EOS d3 EOS`. Row r is the slice `stream[r*(L+1) : (r+1)*(L+1)]` for sequence length L;
`inputs = row[:-1]` and `targets = row[1:]`, so consecutive rows share no token and the one prediction
across a row boundary (a row's last token -> the next row's first) is never trained.

Boundaries inside a row, per input position i:
- The EOS that ends document d is the *target* at d's last token (the model learns to end documents),
  while as an *input* it opens the next document's segment at position 0, like GPT-2's use of
  `<|endoftext|>` as the prompt for unconditional samples. Its target is the next document's first token.
- A new segment starts at i = 0 and at every input EOS; segment ids count 1, 2, 3... within the row and
  `positions` count from 0 at each segment start. Attention is restricted to equal segment ids, so no
  token attends across a document boundary. A row that begins mid-document starts that document's
  continuation at position 0.
- The stream's first document has no EOS before it and starts at position 0 with its first token.
- The final row may be short: its missing tokens are padding with id 0, segment id 0, position 0 and
  `loss_mask` 0. `loss_mask[i]` is 1 exactly when `targets[i]` is a real token. A last row holding a
  single token would have no real target and is not counted as a row.
"""

from __future__ import annotations

import numpy as np

PAD_ID = 0  # masked out everywhere it appears; segment id 0 marks padding for the model too


def num_rows(num_tokens: int, seq_len: int) -> int:
    """Rows of seq_len + 1 tokens in a stream, counting a short final row if it has a real target."""
    full, rest = divmod(num_tokens, seq_len + 1)
    return full + (rest >= 2)


def row_tokens(stream: np.ndarray, seq_len: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens [n, seq_len + 1] (int32, padded with PAD_ID) of the given rows, and each row's real length.

    Reads only those rows, so `stream` can be a memory-mapped file of any size.
    """
    width = seq_len + 1
    rows = np.asarray(rows, np.int64)
    starts = rows * width
    offsets = starts[:, None] + np.arange(width)
    real = offsets < len(stream)
    tokens = np.where(real, stream[np.minimum(offsets, len(stream) - 1)], PAD_ID).astype(np.int32)
    lengths = np.clip(len(stream) - starts, 0, width)
    return tokens, lengths


def pack(tokens: np.ndarray, lengths: np.ndarray, eos_id: int) -> dict[str, np.ndarray]:
    """Model inputs for rows of seq_len + 1 tokens of which the first `lengths` are real (module docstring).

    A row of length 0 is an all-padding row (every mask 0), used to fill the last evaluation batch.
    """
    tokens = np.asarray(tokens, np.int32)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    index = np.arange(inputs.shape[1])
    lengths = np.asarray(lengths)[:, None]
    real = index < lengths
    starts = ((inputs == eos_id) | (index == 0)) & real
    segment_ids = np.cumsum(starts, axis=1, dtype=np.int32) * real
    last_start = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    positions = (index - last_start) * real
    return {
        "inputs": np.ascontiguousarray(inputs),
        "targets": np.ascontiguousarray(targets),
        "segment_ids": segment_ids.astype(np.int32),
        "positions": positions.astype(np.int32),
        "loss_mask": (index < lengths - 1).astype(np.float32),
    }
