"""The benchmark's reports as Markdown tables (through :func:`keras_vit.markdown.markdown_table`):
the model and matmul cases, the lower-precision speed-ups, and the latency of exported files."""

from __future__ import annotations

from typing import Dict, List

from keras_vit.markdown import markdown_table

_RESULT_COLUMNS = ["case", "model", "backend", "dtype", "batch", "jit", "images/s", "GFLOP/s", "matmul GFLOP/s",
                   "of matmul", "peak MiB"]
_SPEEDUP_COLUMNS = ["speed-up over float32", "model", "backend", "dtype", "batch", "images/s", "float32 images/s",
                    "speed-up", "matmul speed-up"]


def _figure(result: Dict, key: str, form) -> str:
    """``form(result[key])`` where the case measured it, else an empty cell."""
    return form(result[key]) if key in result else ""


def _result_row(result: Dict) -> List[str]:
    if "error" in result:
        return [result.get("case"), result.get("variant", ""), result.get("backend", ""), "", "", "",
                f"error: {result['error']}", "", "", "", ""]
    if result["case"] == "matmul":
        model = f"{result.get('size', '')}x{result.get('size', '')} matmul"
    else:
        model = result.get("model", "JPEG files")
    return [
        result["case"], model, result.get("backend", "tensorflow"), result.get("dtype_policy", result.get("dtype", "")),
        result.get("batch", ""), result.get("jit_compile", ""),
        _figure(result, "images_per_second", lambda v: f"{v:.1f}"),
        _figure(result, "flops_per_second", lambda v: f"{v / 1e9:.1f}"),
        _figure(result, "matmul_flops_per_second", lambda v: f"{v / 1e9:.1f}"),
        _figure(result, "fraction_of_matmul_rate", lambda v: f"{100 * v:.0f}%"),
        _figure(result, "peak_memory_mib", lambda v: f"{v:.0f}"),
    ]


def format_results(results: List[Dict]) -> str:
    """Markdown tables of :func:`keras_vit.tools.benchmark.run_suite`'s results: one row per
    case, and the speed-up cases in a second table, one row per lower-precision policy."""
    speedups = [r for r in results if r.get("case") == "speedup" and "error" not in r]
    numeric = [False] * 4 + [True] * 7
    table = markdown_table(_RESULT_COLUMNS, [_result_row(r) for r in results if r not in speedups], numeric)
    if not speedups:
        return table
    rows = [
        ["inference", r["model"], r["backend"], policy, r["batch"], f"{r['images_per_second'][policy]:.1f}",
         f"{r['images_per_second']['float32']:.1f}", f"{speedup:.2f}x", f"{r['matmul_speedup'][policy]:.2f}x"]
        for r in speedups for policy, speedup in r["speedup"].items()
    ]
    return table + "\n\n" + markdown_table(_SPEEDUP_COLUMNS, rows, [False] * 4 + [True] * 5)


def format_artifact_results(report: Dict) -> str:
    """A Markdown table of :func:`keras_vit.tools.benchmark.benchmark_artifacts`' report."""
    threads = report["threads"]
    labels = list(threads) + ["process_threads"]
    header = ["file", "format", "precision", "size (MB)"] + [
        f"ms {threads[label]} thread{'s' if threads[label] != 1 else ''}" if label in threads else "ms (TF threads)"
        for label in labels
    ]
    rows = []
    for result in report["results"]:
        figures = result["latency_ms"]
        rows.append([result["file"], result["format"], result["precision"], f"{result['size_bytes'] / 1e6:.2f}"]
                    + [f"{figures[label]:.2f}" if isinstance(figures.get(label), float) else figures.get("error", "-")
                       for label in labels])
    clock = " (CPU time of the calling thread)" if report.get("clock") == "thread" else ""
    return (markdown_table(header, rows, [False] * 3 + [True] * (len(header) - 3))
            + f"\n\nBatch 1, median of {report['runs']} interleaved runs{clock} on {report['machine']}.")
