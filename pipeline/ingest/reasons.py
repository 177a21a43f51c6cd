"""The fixed list of quarantine reason codes, per modality.

Every record an ingest (or dedup) stage cannot accept becomes a quarantine row with exactly
one of these codes. The list is closed: code that quarantines with an unlisted reason is a
bug, and `pipeline.ingest.common.check_reasons` turns it into an error at the stage
boundary. Each modality's spec (pipeline.modalities) names its list as `reasons`.
"""

from __future__ import annotations

from collections.abc import Mapping

#: a file found under a configured input path whose name is no format the modality reads
#: (pipeline.ingest.listing); one quarantine row per file, added by the ingest stage
UNSUPPORTED_FILE = "a file whose extension is no input format of the modality"

TEXT_REASONS: Mapping[str, str] = {
    "MALFORMED_JSON": "a JSONL line that is not one JSON object",
    "INVALID_UTF8": "bytes that are not valid UTF-8 (strict decoding)",
    "INVALID_ENCODING": "bytes that do not decode in the input's encoding (not utf-8)",
    "MALFORMED_ROW": "a CSV/TSV row with the wrong number of fields",
    "UNREADABLE_FILE": "a file that breaks off: truncated or corrupt compression, a CSV not "
                       "in its encoding, a corrupt Parquet file",
    "MISSING_FIELD": "a JSON object without the configured text field, or a non-string one",
    "EMPTY_TEXT": "shorter than inputs.text.min_chars after normalization (e.g. only spaces)",
    "TOO_LONG": "longer than inputs.text.max_chars after normalization",
    "UNSUPPORTED_FILE": UNSUPPORTED_FILE,
}

IMAGE_REASONS: Mapping[str, str] = {
    "UNDECODABLE_IMAGE": "the bytes are not an image of any known format",
    "TRUNCATED_IMAGE": "the header parses but the pixel data is cut short or corrupt",
    "PIXEL_LIMIT": "the header claims more than inputs.images.max_pixels pixels",
    "UNSUPPORTED_FORMAT": "a real image in a format not in inputs.images.formats",
    "FILE_TOO_LARGE": "the file is larger than inputs.images.max_bytes",
    "UNLABELED_IMAGE": "labels from a manifest: a good image the manifest does not list, or "
                       "lists with an empty label",
    "UNSUPPORTED_FILE": "a file that is no image: neither its name nor its first bytes are an "
                        "image format's (a JPEG named .svg is read as JPEG)",
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
    "UNSUPPORTED_FILE": UNSUPPORTED_FILE,
}
