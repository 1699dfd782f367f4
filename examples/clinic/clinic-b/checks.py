"""clinic-b's own checker: a more specific subcategory counts as the category (J45.9 is J45)."""

import re

CODE = re.compile(r"\b([A-Z][0-9]{2})(?:\.[0-9A-Z]{1,4})?\b")


def category_matches(candidate: str, label: str) -> bool:
    """True when the last ICD-10 code in the answer falls in the label's category."""
    codes = CODE.findall(candidate.upper())
    return bool(codes) and codes[-1] == label.strip().upper()
