"""Scaling experiments: sweep files -> one gptjax run per point -> registry -> scaling-law fits -> report.

| module | job |
|---|---|
| `sweep.py` | sweep TOML files: base config, per-size and per-length tables, axes (sizes, lengths, seeds) -> points |
| `runner.py` | `run_sweep`: train the points in turn, skip finished ones, record failures; `run_sweep_workers` |
| `registry.py` | `registry.jsonl`, one record per finished point, rebuilt from the run directories |
| `fits.py` | `SCALING_LAWS`, the table of laws; Kaplan power laws, E + A/N^α, Chinchilla's L(N, D); bootstrap errors |
| `analysis.py` | which points each law is fitted to; learning curves |
| `plots.py` | the report's matplotlib plots, in gptjax.reporting's style |
| `report.py` | `build_sweep_report`: report.md and a self-contained report.html, from gptjax.reporting's blocks |
| `cli.py` | `gptjax sweep` |
| `sweeps/` | embedded sweep files (`scaling_study.toml` is the default, `micro_study.toml` its seconds-long version) |

Modules are imported on use: this package imports nothing heavy.
"""
