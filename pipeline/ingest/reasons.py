"""The fixed list of quarantine reason codes, per modality.

Every record an ingest (or dedup) stage cannot accept becomes a quarantine row with exactly
one of these codes. The list is closed: code that quarantines with an unlisted reason is a
bug, and `pipeline.ingest.common.check_reasons` turns it into an error at the stage
boundary. Each modality's spec (pipeline.modalities) names its list as `reasons`.
"""

from __future__ import annotations

from collections.abc import Mapping

TEXT_REASONS: Mapping[str, str] = {
    "MALFORMED_JSON": "a JSONL line that is not one JSON object",
    "INVALID_UTF8": "bytes that are not valid UTF-8 (strict decoding)",
    "MISSING_FIELD": "a JSON object without the configured text field, or a non-string one",
    "EMPTY_TEXT": "shorter than inputs.text.min_chars after normalization (e.g. only spaces)",
    "TOO_LONG": "longer than inputs.text.max_chars after normalization",
}

IMAGE_REASONS: Mapping[str, str] = {
    "UNDECODABLE_IMAGE": "the bytes are not an image of any known format",
    "TRUNCATED_IMAGE": "the header parses but the pixel data is cut short or corrupt",
    "PIXEL_LIMIT": "the header claims more than inputs.images.max_pixels pixels",
    "UNSUPPORTED_FORMAT": "a real image in a format not in inputs.images.formats",
    "FILE_TOO_LARGE": "the file is larger than inputs.images.max_bytes",
}

TRANSACTION_REASONS: Mapping[str, str] = {
    "MALFORMED_ROW": "a CSV row with the wrong number of columns or a broken JSON line",
    "MISSING_FIELD": "a required field is empty or absent",
    "BAD_AMOUNT": "the amount is not a decimal number",
    "AMOUNT_OUT_OF_RANGE": "the amount is zero, negative or above inputs.transactions.max_amount",
    "BAD_TIMESTAMP": "the timestamp is not ISO-8601 with a zone",
    "UNKNOWN_CURRENCY": "the currency is not an ISO-4217 code",
    "BAD_CARD": "the card number is not 12-19 digits passing the Luhn check",
    "BAD_FIELD": "another field has an invalid value (MCC not 4 digits, is_fraud not 0/1...)",
    "LABEL_CONFLICT": "dedup: copies of one transaction disagree on is_fraud",
}
