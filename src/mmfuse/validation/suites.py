"""The three expectation suites (manifest, media, leakage) and the one table they all read.

Every check is an expectation on a column of that table, so Great Expectations reports
every offending row (not just the first) and Data Docs show each check with its
unexpected values. Derived columns (``eval_label``, ``*_crosses_split``, ...) turn
cross-row rules into per-row values GX can check.

Critical vs warning is GX's own ``severity`` field (``critical`` stops the pipeline,
``warning`` is reported only); ``description`` says why the check exists and shows in
Data Docs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.expectations import Expectation

from mmfuse.data.manifest import REQUIRED_COLUMNS, REQUIRED_SPLITS, SPLITS, given, row_flags, unsafe_path_reason
from mmfuse.modality import MODALITIES
from mmfuse.params.preprocess import PreprocessParams
from mmfuse.params.validate import ValidateParams

SUITES = ("manifest", "media", "leakage")
IMAGE_MODES = ("L", "RGB", "RGBA", "P")
AUDIO_CHANNELS = (1, 2)
DUPLICATE_CHECK = "sample_not_duplicated"
CRITICAL = "critical"
WARNING = "warning"


@dataclass(frozen=True)
class Check:
    """One expectation plus how to report a failing row.

    ``detail`` is the table column whose value is shown for a failing row (the error
    message rather than ``decodable=False``, the other split rather than ``True``).
    """

    name: str
    suite: str
    expectation: Expectation
    detail: str

    @property
    def column(self) -> str:
        return self.expectation.column  # type: ignore[attr-defined]

    @property
    def critical(self) -> bool:
        return self.expectation.severity == CRITICAL


def _leak_details(table: pd.DataFrame, kind: str) -> tuple[pd.Series, pd.Series]:
    """Per row: does this row's file content (by sha256) also appear in another split, and where.

    Only decodable files count: two empty or broken files are reported as undecodable,
    not as leakage. Within a split, sharing a file is fine (avdigits reuses a clip across
    samples of the same split by design).
    """
    crosses = pd.Series(None, index=table.index, dtype=object)
    detail = pd.Series("", index=table.index, dtype=object)
    sha = f"{kind}_sha256"
    usable = table.loc[table[f"{kind}_decodable"].eq(True), ["sample_id", "split", sha]]
    n_splits = usable.groupby(sha)["split"].transform("nunique")
    crosses[usable.index] = n_splits.gt(1)
    leaking = usable[n_splits.gt(1)]
    first_sample: dict[str, dict[str, str]] = {}
    for (digest, split), sample_id in leaking.groupby([sha, "split"])["sample_id"].first().items():
        first_sample.setdefault(digest, {})[split] = sample_id
    for index, _, split, digest in leaking.itertuples():
        other_split, other_id = next((s, i) for s, i in sorted(first_sample[digest].items()) if s != split)
        detail[index] = f"same {kind} bytes (sha256 {digest[:12]}) as {other_split} sample {other_id}"
    return crosses, detail


def _duplicates(table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per row: is it the same sample as an earlier row (same image bytes, audio bytes and text),
    and which one. A duplicate adds no information and weighs its sample twice in training;
    harvested traffic (`mmfuse harvest`) refuses one outright."""
    content = pd.DataFrame(
        {
            "image": table["image_sha256"].where(table["image_decodable"].eq(True), table["image"]),
            "audio": table["audio_sha256"].where(table["audio_decodable"].eq(True), table["audio"]),
            "text": table["text"],
        }
    ).fillna("")
    first = table.groupby([content["image"], content["audio"], content["text"]], sort=False)["sample_id"].transform(
        "first"
    )
    repeated = content.duplicated(keep="first")
    return repeated, first.where(repeated, "")


def _path_problem(rel: str) -> str:
    reason = unsafe_path_reason(rel)
    return f"{rel!r} {reason}" if reason else ""


def validation_table(manifest: pd.DataFrame, facts: pd.DataFrame) -> pd.DataFrame:
    """The one table all suites read: the contract columns, row flags, facts and derived columns.

    Metadata columns of the manifest are left out so that a user column can never shadow
    a derived one. ``row`` is the 1-based data row of the manifest, to find a row again.
    """
    table = manifest[list(REQUIRED_COLUMNS)].copy()
    table.insert(0, "row", range(1, len(table) + 1))
    table = table.join(row_flags(manifest)).join(facts)
    evaluated = table["split"].isin([s for s in SPLITS if s != "train"]) & table["label"].ne("")
    table["eval_label"] = table["label"].where(evaluated, None)
    carried = given(manifest)
    for modality in MODALITIES:  # the split of each row carrying the modality (None where absent)
        table[f"{modality}_split"] = table["split"].where(carried[modality], None)
    for kind in ("image", "audio"):
        table[f"{kind}_path_problem"] = table[kind].map(_path_problem)
        table[f"{kind}_crosses_split"], table[f"{kind}_leak"] = _leak_details(table, kind)
    table["duplicated"], table["duplicate_of"] = _duplicates(table)
    return table


def _check(
    name: str, suite: str, kind: type[Expectation], severity: str, why: str, detail: str | None = None, **kwargs: Any
) -> Check:
    """A check whose description spells out its severity (Data Docs show descriptions, not severities).

    ``detail`` defaults to the checked column.
    """
    expectation = kind(severity=severity, description=f"{severity.upper()}: {why}", **kwargs)
    return Check(name, suite, expectation, detail or kwargs["column"])


def build_checks(params: ValidateParams, contract: PreprocessParams, train_labels: list[str]) -> list[Check]:
    """All checks, in report order. ``train_labels`` is the label set val/test labels must come from.

    The media limits are the input contract (``contract``: the preprocess params), so a file
    validation accepts is one preprocessing and the service accept too.
    """
    in_set = gx.expectations.ExpectColumnValuesToBeInSet
    between = gx.expectations.ExpectColumnValuesToBeBetween
    lengths = gx.expectations.ExpectColumnValueLengthsToBeBetween
    sides = {"min_value": contract.image.min_side, "max_value": contract.image.max_side}
    side_why = "Image sides outside the range break preprocessing."
    manifest = (
        [
            _check(
                f"{column}_column_exists",
                "manifest",
                gx.expectations.ExpectColumnToExist,
                CRITICAL,
                "The manifest contract requires this column.",
                column=column,
            )
            for column in REQUIRED_COLUMNS
        ]
        + [
            _check(
                "sample_id_present",
                "manifest",
                lengths,
                CRITICAL,
                "Every row needs an id.",
                column="sample_id",
                min_value=1,
            ),
            _check(
                "sample_id_unique",
                "manifest",
                gx.expectations.ExpectColumnValuesToBeUnique,
                CRITICAL,
                "Ids name rows in predictions and logs.",
                column="sample_id",
            ),
            _check(
                "split_known",
                "manifest",
                in_set,
                CRITICAL,
                f"Rows outside {'/'.join(SPLITS)} are never used.",
                column="split",
                value_set=list(SPLITS),
            ),
            _check(
                "label_present", "manifest", lengths, CRITICAL, "Every row needs a label.", column="label", min_value=1
            ),
            _check(
                "label_seen_in_train",
                "manifest",
                in_set,
                CRITICAL,
                "A val/test label never seen in train cannot be predicted.",
                detail="label",
                column="eval_label",
                value_set=train_labels,
            ),
            _check(
                "has_modality",
                "manifest",
                in_set,
                CRITICAL,
                f"Each row needs one of {', '.join(MODALITIES)}.",
                detail="sample_id",
                column="has_modality",
                value_set=[True],
            ),
        ]
        + [
            _check(
                f"{modality}_in_every_split",
                "manifest",
                gx.expectations.ExpectColumnDistinctValuesToContainSet,
                CRITICAL,
                f"A model is trained, selected and tested per modality: train, val and test each need rows with {modality}.",  # noqa: E501
                column=f"{modality}_split",
                value_set=list(REQUIRED_SPLITS),
            )
            for modality in MODALITIES
        ]
        + [
            _check(
                f"{kind}_path_safe",
                "manifest",
                in_set,
                CRITICAL,
                "Media paths must stay inside the dataset root.",
                detail=f"{kind}_path_problem",
                column=f"{kind}_path_safe",
                value_set=[True],
            )
            for kind in ("image", "audio")
        ]
    )
    media = [
        _check(
            "image_decodable",
            "media",
            in_set,
            CRITICAL,
            "Every referenced image must decode.",
            detail="image_error",
            column="image_decodable",
            value_set=[True],
        ),
        _check(
            "audio_decodable",
            "media",
            in_set,
            CRITICAL,
            "Every referenced clip must decode.",
            detail="audio_error",
            column="audio_decodable",
            value_set=[True],
        ),
        _check("image_width_in_range", "media", between, CRITICAL, side_why, column="image_width", **sides),
        _check("image_height_in_range", "media", between, CRITICAL, side_why, column="image_height", **sides),
        _check(
            "audio_sample_rate_allowed",
            "media",
            between,
            CRITICAL,
            "Preprocessing and the service refuse sample rates outside the input contract.",
            column="audio_sample_rate",
            min_value=contract.audio.min_input_rate,
            max_value=contract.audio.max_input_rate,
        ),
        _check(
            "audio_duration_in_range",
            "media",
            between,
            CRITICAL,
            "A clip too short carries nothing; too long, it exhausts memory.",
            column="audio_duration_s",
            min_value=contract.audio.min_seconds,
            max_value=contract.audio.max_seconds,
        ),
        _check(
            "text_length_in_range",
            "media",
            between,
            CRITICAL,
            "Overlong text is not a transcript.",
            column="text_length",
            min_value=0,
            max_value=contract.text.max_chars,
        ),
        _check(
            "audio_clipping_low",
            "media",
            between,
            WARNING,
            "Share of samples at full scale (|x| >= 0.999 for integer PCM, >= 1.0 for float).",
            column="audio_clipping_share",
            max_value=params.audio_max_clipping_share,
        ),
        _check(
            "audio_silence_low",
            "media",
            between,
            WARNING,
            f"Share of 20 ms frames below {params.audio_silence_dbfs} dBFS.",
            column="audio_silence_share",
            max_value=params.audio_max_silence_share,
        ),
        _check(
            "image_mode_common",
            "media",
            in_set,
            WARNING,
            "Unusual image modes are converted lossily.",
            column="image_mode",
            value_set=list(IMAGE_MODES),
        ),
        _check(
            "audio_channels_common",
            "media",
            in_set,
            WARNING,
            "Audio with more than two channels is mixed down.",
            column="audio_channels",
            value_set=list(AUDIO_CHANNELS),
        ),
    ]
    leakage = [
        _check(
            f"{kind}_not_in_other_split",
            "leakage",
            in_set,
            CRITICAL,
            f"The same {kind} in two splits leaks evaluation data into training.",
            detail=f"{kind}_leak",
            column=f"{kind}_crosses_split",
            value_set=[False],
        )
        for kind in ("image", "audio")
    ] + [
        _check(
            DUPLICATE_CHECK,
            "leakage",
            in_set,
            WARNING,
            "The same image, audio and text as an earlier row: no new information, and the sample weighs twice.",
            detail="duplicate_of",
            column="duplicated",
            value_set=[False],
        )
    ]
    return manifest + media + leakage
