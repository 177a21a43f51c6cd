"""ISO 4217 currency codes with their minor-unit digits (List One, written out by hand).

`MINOR_UNITS` maps every active alphabetic code to the number of decimal digits of its minor
unit (JPY 0, USD 2, BHD 3, CLF 4), or None where ISO gives "N.A." (precious metals, SDR,
bond-market units, the testing and no-currency codes). `ISO_4217` is the set of its keys,
used as a literal `isin` list by the transaction ingest.

Codes still inside an ISO transition period (ANG -> XCG, SLL -> SLE, ZWL -> ZWG, and CUC,
whose use has ended but which some exports still carry) are kept, so historical data is not
quarantined as UNKNOWN_CURRENCY. Withdrawn codes (HRK, VEF, MRO, STD, BYR, LTL, ...) are not.
"""

from __future__ import annotations

from collections.abc import Mapping

# Grouped by minor unit so that a wrong digit count stands out in review.
_ZERO = ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
         "VND", "VUV", "XAF", "XOF", "XPF")
_THREE = ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")
_FOUR = ("CLF", "UYW")
_NONE = ("XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA",
         "XXX")
_TWO = (
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN",
    "BAM", "BBD", "BDT", "BGN", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN",
    "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CNY", "COP", "COU", "CRC", "CUC", "CUP", "CVE", "CZK",
    "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR",
    "FJD", "FKP",
    "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD",
    "HKD", "HNL", "HTG", "HUF",
    "IDR", "ILS", "INR", "IRR",
    "JMD",
    "KES", "KGS", "KHR", "KPW", "KYD", "KZT",
    "LAK", "LBP", "LKR", "LRD", "LSL",
    "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV",
    "MYR", "MZN",
    "NAD", "NGN", "NIO", "NOK", "NPR", "NZD",
    "PAB", "PEN", "PGK", "PHP", "PKR", "PLN",
    "QAR",
    "RON", "RSD", "RUB",
    "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL", "SOS", "SRD", "SSP", "STN",
    "SVC", "SYP", "SZL",
    "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS",
    "UAH", "USD", "USN", "UYU", "UZS",
    "VED", "VES",
    "WST",
    "XCD", "XCG",
    "YER",
    "ZAR", "ZMW", "ZWG", "ZWL",
)

MINOR_UNITS: Mapping[str, int | None] = {
    **{c: 0 for c in _ZERO},
    **{c: 2 for c in _TWO},
    **{c: 3 for c in _THREE},
    **{c: 4 for c in _FOUR},
    **{c: None for c in _NONE},
}

ISO_4217: frozenset[str] = frozenset(MINOR_UNITS)


def codes_with_minor_unit(digits: int | None) -> tuple[str, ...]:
    """The codes whose minor unit has `digits` decimals (None: ISO's "N.A."), sorted."""
    return tuple(sorted(c for c, d in MINOR_UNITS.items() if d == digits))
