"""Run the validate stage: read facts, run the GX checkpoint, write Data Docs and the summary.

The summary JSON is a DVC metrics file: it holds no timestamps, run ids or temp paths,
so the same data gives the same bytes and a second ``dvc repro`` does nothing. Run
times live only in the Data Docs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.core.expectation_validation_result import ExpectationValidationResult
from great_expectations.data_context import EphemeralDataContext
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from rich.console import Console

from mmfuse.data.manifest import given, read_manifest
from mmfuse.errors import ValidationFailed
from mmfuse.io import atomic_dir, write_json
from mmfuse.params.preprocess import PreprocessParams
from mmfuse.params.validate import ValidateParams
from mmfuse.validation.facts import collect_facts
from mmfuse.validation.suites import SUITES, Check, build_checks, validation_table

DOCS_SITE = "mmfuse"


def _context(docs_dir: Path) -> EphemeralDataContext:
    """An in-memory GX context whose only Data Docs site is ``docs_dir``, telemetry and tqdm bars off."""
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites={
            DOCS_SITE: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _run_checkpoint(
    table: pd.DataFrame, checks: list[Check], docs_dir: Path, max_examples: int | None
) -> dict[str, ExpectationValidationResult]:
    """Run every suite over ``table`` in one checkpoint that also builds Data Docs; results by check name.

    With ``max_examples`` the results list that many failing rows per check (SUMMARY); without,
    every failing row (COMPLETE), for callers that act on each row.
    """
    context = _context(docs_dir)
    batch = (
        context.data_sources.add_pandas("mmfuse")
        .add_dataframe_asset("validation_table")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    names: dict[str, str] = {}
    definitions = []
    for suite_name in SUITES:
        suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
        for check in checks:
            if check.suite == suite_name:
                names[suite.add_expectation(check.expectation).id] = check.name
        definition = gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
        definitions.append(context.validation_definitions.add(definition))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="validate",
            validation_definitions=definitions,
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
            result_format={
                "result_format": "SUMMARY" if max_examples is not None else "COMPLETE",
                "unexpected_index_column_names": ["row"],
                "partial_unexpected_count": max_examples or 0,
            },
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": table})
    return {
        names[outcome.expectation_config.id]: outcome
        for suite_result in result.run_results.values()
        for outcome in suite_result.results
    }


def _plain(value: Any) -> Any:
    """A JSON-stable scalar: numpy types unwrapped, NaN as null, whole floats as ints, others rounded."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else round(value, 6)
    return value


def _entry(check: Check, outcome: ExpectationValidationResult, table: pd.DataFrame) -> dict[str, Any]:
    """One expectation's line in the summary, with failing rows as sample_id + offending value."""
    result = outcome.result or {}
    examples = []
    for hit in result.get("partial_unexpected_index_list") or []:
        row = table.iloc[int(hit["row"]) - 1]
        examples.append({"row": int(row["row"]), "sample_id": row["sample_id"], "value": _plain(row[check.detail])})
    info = outcome.exception_info or {}
    return {
        "suite": check.suite,
        "name": check.name,
        "expectation": check.expectation.expectation_type,
        "column": check.column,
        "critical": check.critical,
        "why": check.expectation.description,
        "success": bool(outcome.success),
        "unexpected_count": result.get("unexpected_count"),
        "missing": sorted(map(str, result["partial_missing_list"])) if "partial_missing_list" in result else None,
        "examples": examples,
        "error": info.get("exception_message") if info.get("raised_exception") else None,
    }


def _describe(entry: dict[str, Any]) -> str:
    """A one-line account of a failed expectation, for the console and the error message."""
    head = f"{entry['suite']}/{entry['name']} ({entry['expectation']} on {entry['column']})"
    if entry["error"]:
        return f"{head}: could not run: {entry['error']}"
    count = entry["unexpected_count"]
    failing = f"{count} row(s) failed" if count is not None else "failed"
    if entry["missing"]:  # a table-level expectation: say what is lacking, and why it matters
        failing += f", missing: {', '.join(entry['missing'])} ({entry['why']})"
    shown = "; ".join(f"{e['sample_id'] or '<no id>'} (row {e['row']}): {e['value']!r}" for e in entry["examples"])
    return f"{head}: {failing}" + (f"; first: {shown}" if shown else "")


def _summary(manifest: pd.DataFrame, entries: list[dict[str, Any]], docs_index: Path) -> dict[str, Any]:
    """The metrics DVC reads: flat top-level numbers, then one entry per expectation."""
    critical = sum(1 for e in entries if e["critical"] and not e["success"])
    return {
        "rows": len(manifest),
        "rows_per_split": {str(k): int(v) for k, v in manifest["split"].value_counts().items()},
        "modalities": {m: int(count) for m, count in given(manifest).sum().items()},
        "success": critical == 0,
        "critical_failures": critical,
        "warnings": sum(1 for e in entries if not e["critical"] and not e["success"]),
        "data_docs": str(docs_index),
        "expectations": entries,
    }


def row_failures(
    table: pd.DataFrame, checks: list[Check], docs_dir: Path, refusing: tuple[str, ...] = ()
) -> tuple[dict[int, list[str]], list[str]]:
    """Run the suites over a validation table (Data Docs into ``docs_dir``) for a caller that keeps
    the rows that pass and refuses the others, as `mmfuse harvest` does.

    Returns, per table row (its ``row`` number) failing a critical check or a check named in
    ``refusing`` (a warning that refuses here, e.g. a duplicate), one line per failure in
    the validate stage's words, and the failed critical checks that judge the table as a whole
    (a missing column, a split without a modality), which no row can be refused for.
    """
    with atomic_dir(Path(docs_dir)) as build_dir:
        outcomes = _run_checkpoint(table, checks, build_dir, None)
    by_row = table.set_index("row")
    failing: dict[int, list[str]] = {}
    whole: list[str] = []
    for check in checks:
        outcome = outcomes[check.name]
        if not (check.critical or check.name in refusing) or outcome.success:
            continue
        hits = (outcome.result or {}).get("unexpected_index_list")
        if not hits:
            whole.append(_describe(_entry(check, outcome, table)))
            continue
        for hit in hits:
            row = int(hit["row"])
            value = _plain(by_row.at[row, check.detail])
            failing.setdefault(row, []).append(
                f"{check.suite}/{check.name}: {value!r} ({check.expectation.description})"
            )
    return failing, whole


def run_validation(
    manifest_path: Path, params: ValidateParams, contract: PreprocessParams, docs_dir: Path, summary_path: Path
) -> dict:
    """Validate a dataset (the manifest's folder is its root); return the summary written to ``summary_path``.

    Data Docs are rebuilt from scratch in ``docs_dir`` (built aside, then
    swapped in, so old runs never pile up and a crash leaves the previous docs intact).
    Failed warnings are printed; success is left to the caller to announce. Raises
    ValidationFailed, after writing both outputs, when any critical expectation fails.
    """
    manifest_path = Path(manifest_path)
    docs_dir = Path(docs_dir)
    console = Console(stderr=True)
    manifest = read_manifest(manifest_path)
    facts = collect_facts(manifest, manifest_path.parent, params.audio_silence_dbfs, console=console)
    table = validation_table(manifest, facts)
    train_labels = sorted(set(table.loc[table["split"].eq("train") & table["label"].ne(""), "label"]))
    checks = build_checks(params, contract, train_labels)
    with atomic_dir(docs_dir) as build_dir:
        outcomes = _run_checkpoint(table, checks, build_dir, params.max_failing_examples)
    entries = [_entry(check, outcomes[check.name], table) for check in checks]
    summary = _summary(manifest, entries, docs_dir / "index.html")
    write_json(summary_path, summary)

    for entry in entries:
        if not entry["critical"] and not entry["success"]:
            console.print(f"warning: {_describe(entry)}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    failed = [entry for entry in entries if entry["critical"] and not entry["success"]]
    if failed:
        lines = "\n".join(f"  - {_describe(entry)}" for entry in failed)
        raise ValidationFailed(
            f"validation of {manifest_path} failed: {len(failed)} critical expectation(s) failed:\n{lines}\n"
            f"Data Docs: {docs_dir / 'index.html'}; summary: {summary_path}"
        )
    return summary
