"""The contract's shared pieces: metadata paths, the choice of rendition, the
declared capabilities and the image extensions."""

from __future__ import annotations

import importlib

import pytest

from adapters.base import (
    IMAGE_EXTENSIONS,
    AssetRef,
    Capabilities,
    MetadataMapping,
    Rendition,
    Unsupported,
    choose_rendition,
    has_image_extension,
    pick,
    reason,
)
from adapters.registry import ADAPTERS

RECORD = {
    "acf": {"location": " Senaatintori ", "department": ""},
    "title": {"rendered": "Tuomiokirkko"},
    "year": 1952,
    "subjects": [{"name": "kirkot"}, {"name": "torit"}, "aukiot"],
    "buildings": [{"value": "0/HKM/", "translated": "Kaupunginmuseo"}],
    "flag": True,
}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("acf.location", "Senaatintori"),
        ("acf.department", None),  # empty is missing
        ("title", "Tuomiokirkko"),
        ("year", "1952"),
        ("subjects", "kirkot, torit, aukiot"),
        ("subjects.1.name", "torit"),
        ("buildings.0.translated", "Kaupunginmuseo"),
        ("buildings", "0/HKM/"),
        ("buildings.5.translated", None),
        ("acf.location.deeper", None),
        ("flag", None),
        ("absent", None),
        ("=Kaupunkiympäristö", "Kaupunkiympäristö"),
        ("", None),
        (None, None),
    ],
)
def test_pick(path: str | None, value: str | None) -> None:
    assert pick(RECORD, path) == value


def test_mapping_applies_and_names_what_is_missing() -> None:
    mapping = MetadataMapping(location="acf.location", date="year", department="acf.department")
    metadata = mapping.apply(RECORD)
    assert (metadata.location, metadata.date, metadata.department) == ("Senaatintori", "1952", None)
    assert metadata.missing == ["department"]


def asset(width: int, height: int, *renditions: tuple[int, int]) -> AssetRef:
    return AssetRef(
        id="1",
        version="v",
        url="u",
        original_url="original",
        width=width,
        height=height,
        renditions=tuple(Rendition(f"{w}x{h}", w, h) for w, h in renditions),
    )


def test_the_smallest_aspect_preserving_rendition_large_enough() -> None:
    photo = asset(4000, 3000, (150, 150), (300, 225), (768, 576), (1024, 768), (1536, 1152))
    assert choose_rendition(photo, 384) == "768x576"
    assert choose_rendition(photo, 1000) == "1536x1152"
    assert choose_rendition(photo, 1200) is None  # only the original is large enough
    assert choose_rendition(photo, 0) is None  # the original was asked for


def test_square_crops_and_off_ratio_sizes_are_never_chosen() -> None:
    photo = asset(4000, 3000, (600, 600), (800, 450), (801, 601))
    assert choose_rendition(photo, 384) == "801x601"  # one pixel of rounding is no crop
    assert choose_rendition(asset(4000, 3000, (600, 600), (800, 450)), 384) is None


def test_no_rendition_without_the_originals_size_or_when_it_is_small() -> None:
    unknown = AssetRef(id="1", version="v", url="u", renditions=(Rendition("r", 800, 600),))
    assert choose_rendition(unknown, 384) is None
    assert choose_rendition(asset(500, 380, (480, 365)), 384) is None


@pytest.mark.parametrize(
    "module",
    [
        "adapters.base",
        "adapters.davxml",
        "adapters.http",
        "adapters.registry",
        "adapters.tags",
        "adapters.transport",
        "adapters.watermark",
        *sorted({target.split(":")[0] for target in ADAPTERS.values()}),
    ],
)
def test_exported_names_are_sorted_and_exist(module: str) -> None:
    loaded = importlib.import_module(module)
    exported = getattr(loaded, "__all__", None)
    if exported is None:
        pytest.skip(f"{module} exports nothing by name")
    assert list(exported) == sorted(exported)
    assert all(hasattr(loaded, name) for name in exported)


def test_reason_is_never_empty() -> None:
    assert reason(OSError()) == "OSError"
    assert reason(ValueError("bad value")) == "bad value"
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError() from inner
    except RuntimeError as outer:
        assert reason(outer) == "[Errno 111] Connection refused"


def test_settings_that_take_an_ability_away_leave_it_undeclared() -> None:
    """Finna's filters and a ResourceSpace special search cannot be checked on
    one asset: such a unit declares no describe, and describe refuses."""
    from adapters.finna import Finna, FinnaSettings
    from adapters.resourcespace import ResourceSpace, ResourceSpaceSettings

    finna = Finna(FinnaSettings(building="0/HKM/", filters=['online_boolean:"1"']))
    space = ResourceSpace(
        ResourceSpaceSettings(
            base_url="https://rs.example/", username="u", private_key="k", search="!collection12"
        )
    )
    for adapter in (finna, space):
        assert not adapter.capabilities.describe
        assert type(adapter).capabilities.describe  # the class still can
        with pytest.raises(Unsupported):
            adapter.describe("12")
    assert Finna(FinnaSettings(building="0/HKM/")).capabilities.describe


def test_an_adapter_keeps_the_observer_it_is_built_with() -> None:
    """Every adapter is built through `Adapter.__init__`, which keeps its
    settings and the observer of its requests."""
    from adapters.finna import Finna, FinnaSettings

    events: list[object] = []
    settings = FinnaSettings(building="0/HKM/")
    finna = Finna(settings, observer=events.append)
    assert finna.settings is settings and finna.observer == events.append
    assert Finna(settings).observer is None


def test_capabilities_without_names_only_abilities_it_has() -> None:
    declared = Capabilities(incremental=True, describe=True)
    assert declared.without("describe") == Capabilities(incremental=True)
    with pytest.raises(ValueError, match="webhooks"):
        declared.without("webhooks")


def test_image_extensions_are_formats_the_fingerprint_decodes() -> None:
    """Every listed raster extension is one Pillow opens, with pillow-heif
    registered as the fingerprint registers it; SVG is listed only to be
    reported as not raster."""
    from PIL import Image

    import connector.core.fingerprint  # noqa: F401  (registers pillow-heif's opener)

    Image.init()
    decoded = set(Image.registered_extensions())
    assert {".jpg", ".png", ".heic", ".hif", ".avif", ".jp2"} <= IMAGE_EXTENSIONS
    assert IMAGE_EXTENSIONS - decoded == {".svg", ".svgz"}


def test_an_image_extension_counts_in_any_case_and_only_at_the_end() -> None:
    assert has_image_extension("kuvat/IMG_0001.HIF")
    assert has_image_extension("https://a.example/x/kuva.Jpeg")
    assert not has_image_extension("kuva.jpg.txt")
    assert not has_image_extension("raw.cr2")
    assert not has_image_extension("kuva.jxl")
