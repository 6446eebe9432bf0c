from __future__ import annotations

import io
import warnings

from PIL import Image

from connector.core.capture import CaptureFacts, contradictions, other_moment, read_capture_facts


def jpeg_with_exif(**tags: object) -> Image.Image:
    image = Image.new("RGB", (32, 24), (120, 80, 40))
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS R5"
    detail = exif.get_ifd(0x8769)
    detail[0x9003] = tags.get("taken_at", "2024:05:01 12:00:00")
    detail[0x9291] = tags.get("subsec", "120")
    detail[0xA431] = tags.get("serial", "0123456")
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (60.0, 10.0, 12.0)
    gps[3], gps[4] = "E", (24.0, 56.0, 30.0)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_reads_time_subseconds_camera_serial_and_gps() -> None:
    facts = read_capture_facts(jpeg_with_exif())
    assert facts.taken_at == "2024:05:01 12:00:00"
    assert facts.subsec == "120"
    assert (facts.make, facts.model, facts.serial) == ("Canon", "EOS R5", "0123456")
    assert facts.latitude is not None and abs(facts.latitude - 60.17) < 0.01
    assert facts.longitude is not None and abs(facts.longitude - 24.94) < 0.01


def test_burst_frames_contradict_by_subsecond_time() -> None:
    a = read_capture_facts(jpeg_with_exif(subsec="120"))
    b = read_capture_facts(jpeg_with_exif(subsec="153"))
    found = contradictions(a, b)
    assert found and "sub-second" in found[0]


def test_missing_facts_never_contradict() -> None:
    full = read_capture_facts(jpeg_with_exif())
    assert contradictions(full, CaptureFacts()) == []
    assert contradictions(full, full) == []


def test_far_apart_gps_contradicts() -> None:
    a = CaptureFacts(latitude=60.17, longitude=24.94)
    b = CaptureFacts(latitude=60.20, longitude=24.94)
    assert any("GPS" in text for text in contradictions(a, b))


def test_corrupt_exif_gives_no_facts_instead_of_an_error() -> None:
    image = Image.new("RGB", (8, 8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own complaint on open is not under test
        opened = Image.open(io.BytesIO(buffer.getvalue()))
    assert read_capture_facts(opened) == CaptureFacts()


def test_burst_frames_of_one_camera_are_another_moment() -> None:
    a = read_capture_facts(jpeg_with_exif(subsec="120"))
    b = read_capture_facts(jpeg_with_exif(subsec="153"))
    assert other_moment(a, b)
    later = read_capture_facts(jpeg_with_exif(taken_at="2024:05:01 12:00:03"))
    assert other_moment(a, later)


def test_rewritten_camera_facts_are_not_another_moment() -> None:
    a = CaptureFacts(taken_at="2024:05:01 12:00:00", make="Canon", model="EOS R5")
    rewritten = CaptureFacts(taken_at="2024:05:01 12:00:00", make="Adobe", model="Lightroom")
    assert contradictions(a, rewritten)  # still shown, for review
    assert other_moment(a, rewritten) == []
    # Another camera at another time is not "the same camera, later" either.
    other = CaptureFacts(taken_at="2024:05:01 12:00:09", make="Nikon", model="D750")
    assert other_moment(a, other) == []


def test_time_zone_correction_and_shortened_subseconds_are_one_moment() -> None:
    a = CaptureFacts(taken_at="2024:05:01 12:00:00", subsec="120", make="Canon", serial="1")
    shifted = CaptureFacts(taken_at="2024:05:01 15:00:00", subsec="12", make="Canon", serial="1")
    assert other_moment(a, shifted) == []
    short = CaptureFacts(taken_at="2024:05:01 12:00:00", subsec="1", make="Canon", serial="1")
    assert other_moment(a, short) == []
    assert contradictions(a, short) == []


def test_frame_numbers_apart_are_another_moment() -> None:
    a = CaptureFacts(make="Canon", serial="1", image_number="4411")
    b = CaptureFacts(make="Canon", serial="1", image_number="4412")
    assert other_moment(a, b)
