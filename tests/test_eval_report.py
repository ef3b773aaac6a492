"""eval.report: synthetic results files -> Markdown/HTML report and plots, and its input errors."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eval import metrics
from eval.metrics import Metric, register_metric
from eval.report import build_report, report_command
from eval.results import ReportError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZES = (
    ("tiny-small", 1_100_000, 1_000_000),
    ("tiny-medium", 4_200_000, 4_000_000),
    ("tiny-large", 16_500_000, 16_000_000),
)
KS = (0, 1, 8)


def _result(task: str, k: int, metrics: dict[str, float | None], prompt: str | None = None) -> dict[str, Any]:
    return {
        "task": task,
        "split": "validation",
        "num_fewshot": k,
        "fewshot_split": "train",
        "seed": 1234,
        "num_docs": 500,
        "metrics": metrics,
        "example_prompt": prompt or f"{task} prompt, {k} shots\nAnswer:",
    }


def _write(
    path: Path,
    name: str,
    params: int,
    results: list[dict[str, Any]],
    step: int | None = 1000,
    non_embedding: int | None = None,
) -> Path:
    doc = {
        "model": {
            "name": name,
            "params": params,
            "non_embedding_params": non_embedding or params - 1000,
            "checkpoint": f"runs/{name}/ckpt",
            "step": step,
        },
        "tokenizer": "byte",
        "created": "2026-11-22T00:00:00+00:00",
        "gptjax_version": "0.1.0",
        "results": results,
    }
    path.write_text(json.dumps(doc))
    return path


def _ladder_results(i: int) -> list[dict[str, Any]]:
    """Model i of the ladder: every cell is a round number so the expected table text is exact."""
    results = []
    for j, k in enumerate(KS):
        results += [
            _result(
                "hellaswag",
                k,
                {"acc": 0.30, "acc_stderr": 0.01, "acc_norm": 0.452 + 0.05 * i + 0.01 * j, "acc_norm_stderr": 0.011},
            ),
            _result(
                "lambada_openai",
                k,
                {"acc": 0.20 + 0.1 * i, "acc_stderr": 0.006, "perplexity": 250.0 / (i + 1), "perplexity_stderr": 12.5},
            ),
            _result(
                "triviaqa",
                k,
                {"exact_match": 0.03 + 0.02 * j, "exact_match_stderr": 0.004, "f1": 0.1, "f1_stderr": 0.01},
            ),
        ]
    results.append(
        _result(
            "wikitext",
            0,
            {
                "word_perplexity": 123.456 / (i + 1),
                "word_perplexity_stderr": None,
                "byte_perplexity": 2.0,
                "bits_per_byte": 1.0,
            },
        )
    )
    return results


@pytest.fixture(scope="module")
def ladder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("ladder")
    paths = [
        _write(root / f"{name}.json", name, params, _ladder_results(i), non_embedding=non_emb)
        for i, (name, params, non_emb) in enumerate(SIZES)
    ]
    out = root / "report"
    return out, build_report(paths, out)


def test_markdown_primary_table_has_value_and_stderr_cells(ladder: tuple[Path, dict[str, Path]]) -> None:
    md = (ladder[0] / "report.md").read_text()
    assert "| Task | Metric | K | tiny-small | tiny-medium | tiny-large |" in md
    assert "| hellaswag | acc_norm ↑ | 0 | 45.2 ± 1.1 | 50.2 ± 1.1 | 55.2 ± 1.1 |" in md
    assert "| hellaswag | acc_norm ↑ | 8 | 47.2 ± 1.1 | 52.2 ± 1.1 | 57.2 ± 1.1 |" in md
    assert "| lambada_openai | acc ↑ | 1 | 20.0 ± 0.6 | 30.0 ± 0.6 | 40.0 ± 0.6 |" in md
    assert "| triviaqa | exact_match ↑ | 1 | 5.0 ± 0.4 | 5.0 ± 0.4 | 5.0 ± 0.4 |" in md
    # Perplexity: lower is better, not a percentage, no ± when the stderr is null.
    assert "| wikitext | word_perplexity ↓ | 0 | 123.5 | 61.7 | 41.2 |" in md


def test_markdown_full_metrics_and_provenance(ladder: tuple[Path, dict[str, Path]]) -> None:
    md = (ladder[0] / "report.md").read_text()
    assert "| Model | K | Split | Few-shot split | Seed | Docs | acc ↑ | perplexity ↓ |" in md
    assert "| tiny-medium | 0 | validation | train | 1234 | 500 | 30.0 ± 0.6 | 125.0 ± 12.5 |" in md
    assert "| word_perplexity ↓ | byte_perplexity ↓ | bits_per_byte ↓ |" in md
    for name, _, _ in SIZES:
        assert f"{ladder[0].parent / name}.json" in md
        assert f"runs/{name}/ckpt" in md
    assert "**hellaswag, Few-shot (K=8)**\n\n```text\nhellaswag prompt, 8 shots\nAnswer:\n```" in md
    assert "![" in md and "](plots/aggregate.png)" in md


def test_html_is_self_contained_and_well_formed(ladder: tuple[Path, dict[str, Path]]) -> None:
    out, written = ladder
    page = (out / "report.html").read_text()
    assert 'src="http' not in page and "href=" not in page and "<link" not in page
    root = ET.fromstring(page)  # well-formed XML-compatible markup: every tag closed, entities escaped
    images = list(root.iter("img"))
    assert len(images) == sum(key.endswith(".png") for key in written)
    for img in images:
        src = img.attrib["src"]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    summaries = [s.text for s in root.iter("summary")]
    assert len(summaries) == 3 * len(KS) + 1  # one prompt per task and K, shared by all three models
    assert "wikitext, Zero-shot" in summaries
    cells = [td.text for td in root.iter("td")]
    assert "45.2 ± 1.1" in cells


def test_plots_are_non_empty_png_and_svg(ladder: tuple[Path, dict[str, Path]]) -> None:
    out, written = ladder
    pngs = sorted(key for key in written if key.endswith(".png"))
    assert pngs == sorted(
        [
            "plots/aggregate.png",
            *(
                f"plots/{kind}_{task}.png"
                for kind in ("task", "scaling")
                for task in ("hellaswag", "lambada_openai", "triviaqa")
            ),
            "plots/scaling_wikitext.png",
        ]
    )  # wikitext has one K, so no plot against K
    for key in pngs:
        assert written[key] == out / key
        data = written[key].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        assert written[key.replace(".png", ".svg")].read_text().lstrip().startswith("<?xml")
    assert written["report.md"] == out / "report.md" and written["report.html"] == out / "report.html"
    assert "Non-embedding parameters (log scale)" in written["plots/aggregate.svg"].read_text()


def test_total_parameter_axis_is_named(tmp_path: Path) -> None:
    paths = [
        _write(tmp_path / f"{i}.json", f"m{i}", 10**6 * (i + 1), [_result("piqa", 0, {"acc_norm": 0.6})])
        for i in range(2)
    ]
    written = build_report(paths, tmp_path / "out", params_kind="params")
    assert "Parameters, including embeddings (log scale)" in written["plots/scaling_piqa.svg"].read_text()


def test_one_model_size_gets_no_scaling_plots(tmp_path: Path) -> None:
    path = _write(tmp_path / "one.json", "tiny-small", 1_100_000, _ladder_results(0))
    written = build_report([path], tmp_path / "out")
    assert not [key for key in written if "scaling" in key or "aggregate" in key]
    assert not list((tmp_path / "out" / "plots").glob("scaling_*")) and "plots/task_hellaswag.png" in written
    assert "one model size" in (tmp_path / "out" / "report.md").read_text()


def test_same_model_name_is_kept_apart_by_step(tmp_path: Path) -> None:
    results = [_result("hellaswag", 0, {"acc_norm": 0.40, "acc_norm_stderr": 0.01})]
    late = _write(tmp_path / "late.json", "gpt", 10**6, [_result("hellaswag", 0, {"acc_norm": 0.50})], step=200)
    early = _write(tmp_path / "early.json", "gpt", 10**6, results, step=100)
    build_report([late, early], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| Task | Metric | K | gpt @ step 100 | gpt @ step 200 |" in md
    assert "| hellaswag | acc_norm ↑ | 0 | 40.0 ± 1.0 | 50.0 |" in md


def test_metric_preference_chooses_the_primary_metric(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.json", "m", 10**6, _ladder_results(0))
    build_report([path], tmp_path / "out", {"hellaswag": "acc", "lambada": "perplexity"})
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| hellaswag | acc ↑ | 0 | 30.0 ± 1.0 |" in md
    assert "| lambada_openai | perplexity ↓ | 0 | 250.0 ± 12.5 |" in md
    with pytest.raises(ReportError, match=r"hellaswag=bleu .*'hellaswag'.*acc, acc_norm"):
        build_report([path], tmp_path / "out2", {"hellaswag": "bleu"})


@pytest.fixture
def probe_metric() -> Iterator[Metric]:
    """A lower-is-better metric registered for one test, as a module adding its own metrics would."""
    metric = register_metric(
        Metric("probe_loss", metrics.mean, bootstrap=False, higher_is_better=False, percentage=False)
    )
    yield metric
    del metrics._REGISTERED[metric.name]


def test_direction_and_percentage_come_from_the_metric_table(tmp_path: Path, probe_metric: Metric) -> None:
    results = [_result("probe", 0, {"chrf": 0.25, "probe_loss": 0.5, "probe_loss_stderr": 0.01})]
    build_report([_write(tmp_path / "m.json", "m", 10**6, results)], tmp_path / "out", {"probe": "probe_loss"})
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| probe | probe_loss ↓ | 0 | 0.500 ± 0.010 |" in md  # registered: lower is better, not a percentage
    # chrf is in no table: higher is better, and shown as is although every value lies in [0, 1].
    assert "| Docs | probe_loss ↓ | chrf ↑ |" in md and "| 500 | 0.500 ± 0.010 | 0.250 |" in md


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = [_result("piqa", 0, {"acc": 0.6})]
    no_metrics = {k: v for k, v in good[0].items() if k != "metrics"}
    missing_params = _write(tmp_path / "params.json", "m", 10**6, good)
    doc = json.loads(missing_params.read_text())
    del doc["model"]["params"]
    missing_params.write_text(json.dumps(doc))
    (tmp_path / "broken.json").write_text("{not json")
    return {
        "invalid JSON": (tmp_path / "broken.json", r"broken\.json is not valid JSON"),
        "missing metrics": (
            _write(tmp_path / "nometrics.json", "m", 10**6, [*good, no_metrics]),
            r"nometrics\.json is not a gptjax results file: missing key 'results\[1\]\.metrics'",
        ),
        "missing params": (missing_params, r"params\.json is not a gptjax results file: missing key 'model\.params'"),
        "wrong type": (
            _write(tmp_path / "type.json", "m", 10**6, [{**good[0], "num_fewshot": "0"}]),
            r"type\.json: results\[0\]\.num_fewshot must be int, got '0'",
        ),
        "bad metric": (
            _write(tmp_path / "metric.json", "m", 10**6, [_result("piqa", 0, {"acc": "high"})]),
            r"metric\.json: results\[0\]\.metrics\.acc must be a number, got 'high'",
        ),
        "empty results": (_write(tmp_path / "empty.json", "m", 10**6, []), r"empty\.json has no results"),
        "repeated task": (
            _write(tmp_path / "twice.json", "m", 10**6, good * 2),
            r"twice\.json: results\[0\] and results\[1\] are both task 'piqa' at num_fewshot=0",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["invalid JSON", "missing metrics", "missing params", "wrong type", "bad metric", "empty results", "repeated task"],
)
def test_invalid_results_files_are_named(tmp_path: Path, case: str) -> None:
    path, message = _bad_files(tmp_path)[case]
    with pytest.raises(ReportError, match=message):
        build_report([path], tmp_path / "out")
    assert not (tmp_path / "out" / "report.md").exists()


def test_missing_file_empty_input_and_duplicates_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json does not exist"):
        build_report([tmp_path / "nowhere.json"], tmp_path / "out")
    with pytest.raises(ReportError, match="no results files given"):
        build_report([], tmp_path / "out")
    path = _write(tmp_path / "m.json", "m", 10**6, [_result("piqa", 0, {"acc": 0.6})])
    with pytest.raises(ReportError, match=r"m\.json was given twice"):
        build_report([path, tmp_path / "." / "m.json"], tmp_path / "out")
    with pytest.raises(ReportError, match="params_kind must be one of"):
        build_report([path], tmp_path / "out", params_kind="embedding")  # type: ignore[arg-type]


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(_write(tmp_path / f"{i}.json", f"m{i}", 10**6 * (i + 1), _ladder_results(i))) for i in range(2)]
    assert (
        report_command([*paths, "--out", str(tmp_path / "out"), "--metric", "hellaswag=acc", "--params", "total"]) == 0
    )
    assert "report.md" in capsys.readouterr().out
    assert "| hellaswag | acc ↑ | 0 | 30.0 ± 1.0 | 30.0 ± 1.0 |" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "plots" / "aggregate.png").is_file()

    with pytest.raises(FileNotFoundError, match=r"missing\.json does not exist"):
        report_command([str(tmp_path / "missing.json"), "--out", str(tmp_path / "out2")])
    with pytest.raises(SystemExit):
        report_command([*paths, "--out", str(tmp_path / "out3"), "--metric", "hellaswag"])
    assert "'hellaswag' is not of the form TASK=METRIC" in capsys.readouterr().err
