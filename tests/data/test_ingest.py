"""Ingesting a dataset of your own: copied exactly (media packed), unsafe paths never followed."""

from __future__ import annotations

import pytest

from mmfuse.data.manifest import dataset_manifest, read_manifest, row_flags
from mmfuse.data.media import PackedMedia, open_media
from mmfuse.errors import ConfigError, ManifestError
from mmfuse.params.data import DataParams
from mmfuse.stages.ingest import run


def test_own_dataset_is_copied_with_its_media(tiny_dataset, tmp_path):
    params = DataParams(dataset=str(tiny_dataset))
    manifest = run(sources=tmp_path / "sources", raw=tmp_path / "raw", params=params)
    assert manifest == dataset_manifest(params, tmp_path / "raw")
    frame = read_manifest(manifest)
    assert len(frame) == 30
    media = open_media(manifest.parent)
    assert isinstance(media, PackedMedia)
    assert sorted(p.name for p in (manifest.parent / "media").iterdir()) == ["index.csv", "shard-00000.tar"]
    for rel in [*frame["image"], *frame["audio"]]:
        if rel:
            assert media.read(rel) == (tiny_dataset.parent / rel).read_bytes()


def test_unsafe_rows_are_kept_for_validation_but_never_followed(tiny_dataset, tmp_path):
    secret = tiny_dataset.parent.parent / "secret.png"
    secret.write_bytes(b"not yours")
    with open(tiny_dataset, "a") as handle:
        handle.write("evil,0,train,../secret.png,,\n")
        handle.write(f"abs,0,train,{secret},,\n")
        handle.write("empty,0,train,,,\n")
    manifest = run(sources=tmp_path / "sources", raw=tmp_path / "raw", params=DataParams(dataset=str(tiny_dataset)))
    frame = read_manifest(manifest)
    flags = row_flags(frame).set_index(frame["sample_id"])
    assert not flags.loc["evil", "image_path_safe"] and not flags.loc["abs", "image_path_safe"]
    assert not flags.loc["empty", "has_modality"]
    assert b"not yours" not in b"".join(p.read_bytes() for p in (tmp_path / "raw").rglob("*") if p.is_file())
    media = open_media(manifest.parent)
    with pytest.raises(ManifestError, match="leaves the dataset root"):
        media.read("../secret.png")
    with pytest.raises(ManifestError, match="is absolute"):
        media.read(str(secret))


def test_text_is_read_verbatim(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("sample_id,label,split,image,audio,text\na,1,train,,,n/a\nb,1,train,,,NaN\n")
    assert list(read_manifest(path)["text"]) == ["n/a", "NaN"]


def test_missing_manifest_and_columns_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such manifest"):
        run(sources=tmp_path / "sources", raw=tmp_path / "raw", params=DataParams(dataset=str(tmp_path / "nope.csv")))
    bad = tmp_path / "m.csv"
    bad.write_text("sample_id,label\nx,1\n")
    with pytest.raises(ManifestError, match=r"lacks required column\(s\) \['split', 'image', 'audio', 'text'\]"):
        read_manifest(bad)


def _ingested(tiny_dataset, tmp_path) -> bytes:
    manifest = run(sources=tmp_path / "sources", raw=tmp_path / "raw", params=DataParams(dataset=str(tiny_dataset)))
    return manifest.read_bytes()


def test_a_dangling_link_is_named_before_anything_is_written(tiny_dataset, tmp_path):
    before = _ingested(tiny_dataset, tmp_path)
    ghost = tiny_dataset.parent / "images" / "ghost.png"
    ghost.symlink_to(tmp_path / "nowhere.png")
    with open(tiny_dataset, "a") as handle:
        handle.write("late,0,train,images/train-0-0.png,,\n")  # a change that must not half-land
    with pytest.raises(ManifestError, match=r"ghost\.png is a link to .*nowhere\.png, which does not exist"):
        _ingested(tiny_dataset, tmp_path)
    assert (tmp_path / "raw" / "tiny" / "manifest.csv").read_bytes() == before


def test_a_named_media_file_linking_outside_the_folder_is_named_as_such(tiny_dataset, tmp_path):
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((tiny_dataset.parent / "images" / "train-0-0.png").read_bytes())
    (tiny_dataset.parent / "images" / "linked.png").symlink_to(outside)
    with open(tiny_dataset, "a") as handle:
        handle.write("linked,0,train,images/linked.png,,\n")
    with pytest.raises(ManifestError, match=r"linked\.png \(named by the manifest\) links to .*outside the dataset"):
        _ingested(tiny_dataset, tmp_path)
    (tiny_dataset.parent / "images" / "linked.png").unlink()
    (tmp_path / "elsewhere").mkdir()
    outside.rename(tmp_path / "elsewhere" / "linked.png")
    (tiny_dataset.parent / "more").symlink_to(tmp_path / "elsewhere")  # through a linked folder, the same
    tiny_dataset.write_text(tiny_dataset.read_text().replace("images/linked.png", "more/linked.png"))
    with pytest.raises(ManifestError, match=r"more/linked\.png \(named by the manifest\) links to .*outside"):
        _ingested(tiny_dataset, tmp_path)
    tiny_dataset.write_text(tiny_dataset.read_text().replace("linked,0,train,more/linked.png,,\n", ""))
    inside = tiny_dataset.parent / "images" / "inside.png"
    inside.symlink_to(tiny_dataset.parent / "images" / "train-0-0.png")  # a link within the folder is fine
    with open(tiny_dataset, "a") as handle:
        handle.write("inside,0,train,images/inside.png,,\n")
    manifest = run(sources=tmp_path / "sources", raw=tmp_path / "raw", params=DataParams(dataset=str(tiny_dataset)))
    assert open_media(manifest.parent).read("images/inside.png") == inside.read_bytes()


def test_another_dataset_left_in_raw_is_dropped(tiny_dataset, tmp_path):
    (tmp_path / "raw" / "avdigits").mkdir(parents=True)
    (tmp_path / "raw" / "avdigits" / "manifest.csv").write_text("old")
    _ingested(tiny_dataset, tmp_path)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["tiny"]
