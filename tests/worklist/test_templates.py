"""Templates: sections, coded fields with their codes, validation of content (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydicom.sr import _concepts_dict as standard_codes

from telerad.worklist import TEMPLATES, InvalidReportContent, UnknownTemplate, get_template
from telerad.worklist.templates import (
    LOCAL_SCHEME,
    MAX_SECTION_CHARS,
    PRESENCE,
    SECTIONS,
    canonical_json,
    content_sha256,
    critical_findings,
    is_critical,
    parse_content,
    template_summary,
)

UID = "1.2.826.0.1.3680043.8.498.1"


def all_codes() -> list[tuple[str, str, str]]:
    codes = [(s.heading.scheme, s.heading.value, s.heading.meaning) for s in SECTIONS]
    codes += [(s.element.scheme, s.element.value, s.element.meaning) for s in SECTIONS]
    codes += [(c.scheme, c.value, c.meaning) for c in PRESENCE.values()]
    for template in TEMPLATES.values():
        codes.append((template.title.scheme, template.title.value, template.title.meaning))
        codes += [(f.concept.scheme, f.concept.value, f.concept.meaning) for f in template.fields]
    return sorted({code for code in codes if code[0] != LOCAL_SCHEME})  # private: no table


@pytest.mark.parametrize(("scheme", "value", "meaning"), all_codes())
def test_every_standard_code_is_in_the_dicom_code_tables(
    scheme: str, value: str, meaning: str
) -> None:
    meanings = {
        m.lower()
        for entry in standard_codes.concepts[scheme].values()
        if value in entry
        for m in [entry[value][0]]
    }
    assert meanings, f"{scheme} {value} not in PS3.16 tables"
    assert any(standard.startswith(meaning.lower()) for standard in meanings), meanings


def test_the_required_templates_and_sections_exist() -> None:
    assert {"ct-head", "ct-chest", "ct-abdomen", "generic"} <= set(TEMPLATES)
    assert [s.key for s in SECTIONS] == [
        "clinical_information", "technique", "comparison", "findings", "impression",
        "recommendation",
    ]  # fmt: skip
    assert get_template("ct-head").field("midline_shift_mm").unit is not None
    with pytest.raises(UnknownTemplate):
        get_template("mri-knee")


GOOD = {
    "sections": {"findings": "  Blood.\r\nMore.  ", "impression": "SDH"},
    "fields": {"haemorrhage": "present", "midline_shift_mm": 4},
    "key_images": [{"sop_instance_uid": UID, "frame": 2}, {"sop_instance_uid": UID, "frame": 2}],
}


def test_valid_content_is_normalised() -> None:
    content = parse_content(get_template("ct-head"), GOOD)
    assert content.sections == {"findings": "Blood.\nMore.", "impression": "SDH"}
    assert content.fields == {"haemorrhage": "present", "midline_shift_mm": 4.0}
    assert len(content.key_images) == 1  # duplicates collapse


@pytest.mark.parametrize(
    ("template", "raw", "message"),
    [
        ("ct-head", [], "JSON object"),
        ("ct-head", {"colour": 1}, "unknown content key"),
        ("ct-head", {"sections": {"opinion": "x"}}, "unknown section"),
        ("ct-head", {"sections": {"findings": 5}}, "must be text"),
        ("ct-head", {"sections": {"findings": "a\x00b"}}, "control characters"),
        ("ct-head", {"sections": {"findings": "x" * (MAX_SECTION_CHARS + 1)}}, "exceeds"),
        ("ct-head", {"fields": {"pulmonary_embolism": "present"}}, "no field"),
        ("ct-head", {"fields": {"haemorrhage": "yes"}}, "must be one of"),
        ("ct-head", {"fields": {"midline_shift_mm": "4"}}, "must be a number"),
        ("ct-head", {"fields": {"midline_shift_mm": True}}, "must be a number"),
        ("ct-head", {"fields": {"midline_shift_mm": -1}}, "between 0 and 50"),
        ("ct-head", {"fields": {"midline_shift_mm": float("nan")}}, "must be a number"),
        ("ct-chest", {"fields": {"largest_nodule_mm": 301}}, "between 0 and 300"),
        ("ct-head", {"critical": "yes"}, "true or false"),
        ("ct-head", {"addendum": "late"}, "only an addendum"),
        ("ct-head", {"key_images": [{"sop_instance_uid": "1.2.x"}]}, "not a UID"),
        ("ct-head", {"key_images": [{"sop_instance_uid": UID, "frame": 0}]}, "positive"),
        ("ct-head", {"key_images": "all"}, "must be a list"),
    ],
)
def test_invalid_content_is_refused_naming_the_problem(
    template: str, raw: Any, message: str
) -> None:
    with pytest.raises(InvalidReportContent, match=message):
        parse_content(get_template(template), raw)


@pytest.mark.parametrize(
    ("template", "fields", "flag", "expected"),
    [
        ("ct-head", {"haemorrhage": "present"}, False, ["Intracranial haemorrhage"]),
        ("ct-head", {"haemorrhage": "absent", "midline_shift_mm": 4.9}, False, []),
        ("ct-head", {"midline_shift_mm": 5}, False, ["Midline shift"]),
        ("ct-chest", {"pulmonary_embolism": "present", "nodules": "present"}, False,
         ["Pulmonary embolism"]),
        ("ct-abdomen", {"free_air": "present"}, False, ["Free intraperitoneal air"]),
        ("ct-abdomen", {"abscess": "present"}, True, []),
        ("generic", {}, False, []),
    ],
)  # fmt: skip
def test_critical_findings(
    template: str, fields: dict[str, Any], flag: bool, expected: list[str]
) -> None:
    form = get_template(template)
    content = parse_content(form, {"fields": fields, "critical": flag})
    assert critical_findings(form, content) == expected
    assert is_critical(form, content) is (flag or bool(expected))


def test_content_hash_is_over_canonical_json() -> None:
    form = get_template("ct-head")
    content = parse_content(form, GOOD)
    document = {"template": "ct-head", "study_uid": UID, **content.as_dict()}
    expected = (
        __import__("hashlib")
        .sha256(
            json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        )
        .hexdigest()
    )
    assert content_sha256("ct-head", UID, content) == expected
    reordered = parse_content(form, {"fields": {"midline_shift_mm": 4.0, "haemorrhage": "present"},
                                     "sections": {"impression": "SDH", "findings": "Blood.\nMore."},
                                     "key_images": GOOD["key_images"]})  # fmt: skip
    assert content_sha256("ct-head", UID, reordered) == expected
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_template_summary_lists_codes_for_clients() -> None:
    summary = template_summary(get_template("ct-chest"))
    field = next(f for f in summary["fields"] if f["key"] == "pulmonary_embolism")
    assert field["concept"] == {
        "code": "59282003",
        "scheme": "SCT",
        "meaning": "Pulmonary embolism",
    }
    assert set(field["choices"]) == {"present", "absent", "undetermined"}
