import pytest

from batches.omr.payload import PayloadError, QrPayload, decode_payload


def test_round_trip_with_awkward_characters():
    p = QrPayload("a4-200q-5", page=2, pages=2, exam="MATH;101=ü", student="00123")
    assert decode_payload(p.encode()) == p


@pytest.mark.parametrize(
    "text, reason",
    [
        ("https://example.com/", "foreign"),
        ("OMR1;t=a4-100q-5;p=x", "not a number"),
        ("OMR1;p=1", "damaged"),
        ("OMR1;t=a4;p=3;n=2", "damaged"),
        ("OMR1;t=a4;z=1", "damaged"),
    ],
)
def test_foreign_or_damaged_codes_are_reported(text, reason):
    with pytest.raises(PayloadError, match=reason):
        decode_payload(text)
