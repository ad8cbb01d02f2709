"""QIDO-RS: Search Transaction (PS3.18 §10.6) with the matching of PS3.4 §C.2.2.2, on SQLite
and PostgreSQL. One catalog is loaded per database; every test only reads it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select

from telerad.storage import AuditEvent
from tests.conftest import Api
from tests.factories import ct_datasets, encoded_name_instance, multipart_related, new_uid, part10

DICOM_JSON = "application/dicom+json"
BASE = "http://testserver/dicomweb"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CHINESE_NAME = "Wang^XiaoDong=王^小东"
CHINESE_NAME_JSON = {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"}


# --- the catalog searched --------------------------------------------------------------------

#: label: (who stores it, study attributes, series as (Modality, SeriesNumber, instances)).
STUDIES: dict[str, tuple[str, dict[str, str], list[tuple[str, int, int]]]] = {
    "S1": ("rg1", {"PatientName": "Doe^John", "PatientID": "PID001", "StudyDate": "20240105",
                   "AccessionNumber": "ACC1001", "StudyDescription": "CT THORAX",
                   "ReferringPhysicianName": "Smith^Anna"}, [("CT", 2, 3), ("MR", 3, 2)]),
    "S2": ("rg1", {"PatientName": "Doe^Jane", "PatientID": "PID002", "StudyDate": "20240120",
                   "AccessionNumber": "ACC1002", "StudyDescription": "MR BRAIN",
                   "ReferringPhysicianName": "Jones^Bob"}, [("MR", 1, 2)]),
    "S3": ("rg1", {"PatientName": "Roe^Richard", "PatientID": "PID003", "StudyDate": "20240215",
                   "AccessionNumber": "ACC2001", "StudyDescription": "CT ABDOMEN",
                   "ReferringPhysicianName": "Smith^Anna"}, [("CT", 1, 1)]),
    "S4": ("rg2", {"PatientName": "Doe^Jim", "PatientID": "PID004", "StudyDate": "20231231",
                   "AccessionNumber": "ACC3001", "StudyDescription": "CT HEAD",
                   "ReferringPhysicianName": "Lee^Kim"}, [("CT", 1, 1)]),
}  # fmt: skip
#: Studies from county hospitals that send Chinese names, by Specific Character Set.
CHINESE = {"CN1": "GB18030", "CN2": "GBK", "CN3": "ISO_IR 192"}
ALL = {*STUDIES, *CHINESE}
COUNTY1 = ALL - {"S4"}


@dataclass
class Catalog:
    """UIDs of the loaded studies and series, by label (S1; S1a, S1b for its series)."""

    studies: dict[str, str] = field(default_factory=dict)
    series: dict[str, str] = field(default_factory=dict)
    instances: dict[str, set[str]] = field(default_factory=dict)

    def labels(self, results: list[dict[str, Any]]) -> list[str]:
        """The label of each result's study (its UID when it is not one of ours)."""
        by_uid = {uid: label for label, uid in self.studies.items()}
        return [by_uid.get(uid, uid) for uid in (value(r, "0020000D") for r in results)]

    def expand(self, template: str) -> str:
        return template.format(**self.studies, **self.series)


def store(api: Api, who: str, instances: list[bytes]) -> None:
    body, content_type = multipart_related(instances)
    headers = {"Content-Type": content_type, **api.headers(who)}
    response = api.client.post("/dicomweb/studies", content=body, headers=headers)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def catalog(shared_api: Api) -> Catalog:
    loaded = Catalog()
    for label, (who, attributes, series_list) in STUDIES.items():
        study_uid = loaded.studies[label] = new_uid()
        instances = []
        for letter, (modality, number, slices) in zip("ab", series_list, strict=False):
            datasets = ct_datasets(slices, patient_id=attributes["PatientID"], study_uid=study_uid)
            for ds in datasets:
                for keyword, attribute in attributes.items():
                    setattr(ds, keyword, attribute)
                ds.Modality, ds.SeriesNumber = modality, number
            loaded.series[f"{label}{letter}"] = datasets[0].SeriesInstanceUID
            loaded.instances[f"{label}{letter}"] = {ds.SOPInstanceUID for ds in datasets}
            instances += [part10(ds) for ds in datasets]
        store(shared_api, who, instances)
    for label, charset in CHINESE.items():
        raw = encoded_name_instance(charset, CHINESE_NAME, patient_id=label)
        store(shared_api, "rg1", [raw])
    found = qido(shared_api, "/dicomweb/studies?PatientID=CN*").json()
    loaded.studies.update({value(r, "00100020"): value(r, "0020000D") for r in found})
    assert set(loaded.studies) == ALL
    return loaded


def qido(api: Api, path_and_query: str, who: str = "admin", **headers: str):
    return api.client.get(path_and_query, headers={**api.headers(who), **headers})


def search(api: Api, path_and_query: str, who: str = "admin") -> list[dict[str, Any]]:
    response = qido(api, path_and_query, who)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(DICOM_JSON)
    return response.json()


def study_uids(results: list[dict[str, Any]]) -> list[str]:
    return [value(r, "0020000D") for r in results]


def values(result: dict[str, Any], tag: str) -> list[Any]:
    return result.get(tag, {}).get("Value", [])


def value(result: dict[str, Any], tag: str) -> Any:
    [only] = values(result, tag)
    return only


# --- matching (PS3.4 §C.2.2.2) ---------------------------------------------------------------

MATCHING = [
    ("PatientID=PID001", {"S1"}),
    ("00100020=PID001", {"S1"}),
    ("PatientID=PID00?", {"S1", "S2", "S3", "S4"}),
    ("PatientID=PID*", {"S1", "S2", "S3", "S4"}),
    ("PatientID=PID_0*", set()),  # SQL wildcards in a value are literal
    ("PatientID=PID%250*", set()),
    ("PatientID=", ALL),
    ("PatientID=*", ALL),
    ("PatientName=Doe^John", {"S1"}),
    ("PatientName=doe^john", {"S1"}),  # PN matching is case-insensitive here
    ("PatientName=Doe", set()),  # single value matching: the whole name
    ("PatientName=Doe*", {"S1", "S2", "S4"}),
    ("PatientName=Doe^J?ne", {"S2"}),
    ("PatientName=Wang%5EXiao*", set(CHINESE)),  # percent-encoded ^
    ("PatientName=Doe%2A", {"S1", "S2", "S4"}),  # percent-encoded *
    ("AccessionNumber=ACC1*", {"S1", "S2"}),
    ("AccessionNumber=ACC100?", {"S1", "S2"}),
    ("AccessionNumber=acc1001", set()),  # other VRs match case-sensitively
    ("AccessionNumber=acc1*", set()),
    ("StudyDescription=ct*", set()),
    ("StudyDescription=*HEAD", {"S4"}),
    ("StudyDescription=CT%20A*", {"S3"}),
    ("ReferringPhysicianName=Smith^Anna", {"S1", "S3"}),
    ("ReferringPhysicianName=smith^anna", {"S1", "S3"}),
    ("StudyDate=20240120", {"S2"}),
    ("StudyDate=20240101-20240131", {"S1", "S2"}),
    ("StudyDate=20240105-20240120", {"S1", "S2"}),  # both ends inclusive
    ("StudyDate=-20240131", {"S1", "S2", "S4"}),
    ("StudyDate=20240101-&PatientID=PID*", {"S1", "S2", "S3"}),
    ("ModalitiesInStudy=MR", {"S1", "S2"}),
    ("ModalitiesInStudy=CT&PatientID=PID*", {"S1", "S3", "S4"}),
    ("StudyInstanceUID={S1}", {"S1"}),
    ("StudyInstanceUID={S1},{S3}", {"S1", "S3"}),
    ("StudyInstanceUID={S1}%5C{S3}", {"S1", "S3"}),
    ("0020000D={S2}", {"S2"}),
    ("StudyInstanceUID=1.2.3", set()),
    ("PatientName=Doe*&StudyDate=20240101-20240131", {"S1", "S2"}),
    ("fuzzymatching=true&PatientName=Jan", {"S2"}),
    ("fuzzymatching=false&PatientName=Jan", set()),
]


@pytest.mark.parametrize(("query", "expected"), MATCHING)
def test_study_matching(shared_api, catalog, query, expected):
    results = search(shared_api, "/dicomweb/studies?" + catalog.expand(query))

    assert sorted(catalog.labels(results)) == sorted(expected)


@pytest.mark.parametrize(
    ("path", "level_tag", "expected"),
    [
        ("/dicomweb/studies/{S1}/series?SeriesNumber=3", "0020000E", ["{S1b}"]),
        ("/dicomweb/series?PatientID=PID001&SeriesNumber=2", "0020000E", ["{S1a}"]),
        ("/dicomweb/studies/{S1}/series/{S1a}/instances?InstanceNumber=2", "00200013", [2]),
    ],
)
def test_integer_attribute_matching(shared_api, catalog, path, level_tag, expected):
    results = search(shared_api, catalog.expand(path))

    assert [value(r, level_tag) for r in results] == [
        catalog.expand(e) if isinstance(e, str) else e for e in expected
    ]


@pytest.mark.parametrize(
    "query",
    [
        "Foo=bar",
        "PatientNam=x",
        "99999999=1",
        "0010002=x",
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "offset=x",
        "PatientID=a&PatientID=b",
        "PatientID=a&00100020=b",
        "includefield=NotAKeyword",
        "fuzzymatching=maybe",
        "StudyDate=-",
    ],
)
@pytest.mark.parametrize("path", ["/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances"])
def test_query_that_cannot_be_understood_is_a_bad_request(shared_api, path, query):
    response = qido(shared_api, f"{path}?{query}")

    assert response.status_code == 400, response.text


def test_paging_is_stable_and_complete(shared_api, catalog):
    everything = study_uids(search(shared_api, "/dicomweb/studies"))

    pages = [
        study_uids(search(shared_api, f"/dicomweb/studies?limit=3&offset={offset}"))
        for offset in (0, 3, 6, 9)
    ]

    assert sorted(everything) == sorted(catalog.studies.values())
    assert [len(page) for page in pages] == [3, 3, 1, 0]
    assert [uid for page in pages for uid in page] == everything
    assert study_uids(search(shared_api, "/dicomweb/studies?offset=5")) == everything[5:]
    assert search(shared_api, "/dicomweb/studies?limit=0") == []


SLICE_THICKNESS, KVP, MANUFACTURER, PIXEL_DATA = "00180050", "00180060", "00080070", "7FE00010"


@pytest.mark.parametrize(
    ("include", "present", "absent"),
    [
        ("", set(), {SLICE_THICKNESS, KVP, MANUFACTURER}),
        ("&includefield=00180050", {SLICE_THICKNESS}, {KVP, MANUFACTURER}),
        ("&includefield=SliceThickness,KVP", {SLICE_THICKNESS, KVP}, {MANUFACTURER}),
        ("&includefield=SliceThickness&includefield=KVP", {SLICE_THICKNESS, KVP}, {MANUFACTURER}),
        ("&includefield=StudyDescription", {"00081030"}, {SLICE_THICKNESS}),
        ("&includefield=all", {SLICE_THICKNESS, KVP, MANUFACTURER}, {PIXEL_DATA}),
    ],
)
@pytest.mark.parametrize(
    "path",
    [
        "/dicomweb/studies?StudyInstanceUID={S1}",
        "/dicomweb/studies/{S1}/series?SeriesInstanceUID={S1a}",
        "/dicomweb/studies/{S1}/series/{S1a}/instances?limit=1",
    ],
)
def test_includefield_adds_attributes_from_the_metadata(
    shared_api, catalog, path, include, present, absent
):
    [result] = search(shared_api, catalog.expand(path) + include)

    assert present <= set(result)
    assert not absent & set(result)
    if KVP in present:
        assert values(result, KVP) == [120]
        assert result[SLICE_THICKNESS]["vr"] == "DS"


# --- return keys (PS3.18 Tables 10.6.3-3, -4, -5) --------------------------------------------


def test_study_level_return_keys(shared_api, catalog):
    [study] = search(shared_api, catalog.expand("/dicomweb/studies?PatientID=PID001"))

    assert value(study, "0020000D") == catalog.studies["S1"]
    assert value(study, "00100010") == {"Alphabetic": "Doe^John"}
    assert value(study, "00100020") == "PID001"
    assert value(study, "00080020") == "20240105"
    assert value(study, "00080050") == "ACC1001"
    assert value(study, "00080090") == {"Alphabetic": "Smith^Anna"}
    assert values(study, "00080061") == ["CT", "MR"]
    assert value(study, "00201206") == 2
    assert value(study, "00201208") == 5
    assert value(study, "00081190") == f"{BASE}/studies/{catalog.studies['S1']}"


def test_series_level_return_keys(shared_api, catalog):
    results = search(shared_api, catalog.expand("/dicomweb/studies/{S1}/series"))

    found = {
        value(r, "0020000E"): (value(r, "00080060"), value(r, "00200011"), value(r, "00201209"))
        for r in results
    }
    assert found == {catalog.series["S1a"]: ("CT", 2, 3), catalog.series["S1b"]: ("MR", 3, 2)}
    for result in results:
        assert value(result, "00081190") == (
            f"{BASE}/studies/{catalog.studies['S1']}/series/{value(result, '0020000E')}"
        )


def test_instance_level_return_keys(shared_api, catalog):
    path = catalog.expand("/dicomweb/studies/{S1}/series/{S1a}/instances")

    results = search(shared_api, path)

    assert {value(r, "00080018") for r in results} == catalog.instances["S1a"]
    assert sorted(value(r, "00200013") for r in results) == [1, 2, 3]
    for result in results:
        assert value(result, "00080016") == CT_IMAGE_STORAGE
        assert (value(result, "00280010"), value(result, "00280011")) == (32, 32)
        assert value(result, "00081190") == f"{BASE}/{path.split('/dicomweb/')[1]}/" + value(
            result, "00080018"
        )


@pytest.mark.parametrize(
    ("path", "level_tag", "expected"),
    [
        ("/dicomweb/studies/{S1}/series", "0020000E", {"S1a", "S1b"}),
        ("/dicomweb/studies/{S1}/instances", "00080018", {"S1a", "S1b"}),
        ("/dicomweb/studies/{S1}/series/{S1b}/instances", "00080018", {"S1b"}),
        ("/dicomweb/series?Modality=MR", "0020000E", {"S1b", "S2a"}),
        ("/dicomweb/series?PatientID=PID001", "0020000E", {"S1a", "S1b"}),
        ("/dicomweb/instances?StudyInstanceUID={S1}", "00080018", {"S1a", "S1b"}),
        ("/dicomweb/instances?AccessionNumber=ACC1002", "00080018", {"S2a"}),
    ],
)
def test_every_search_resource(shared_api, catalog, path, level_tag, expected):
    results = search(shared_api, catalog.expand(path))

    if level_tag == "0020000E":
        assert {value(r, level_tag) for r in results} == {catalog.series[s] for s in expected}
    else:
        wanted = set().union(*(catalog.instances[s] for s in expected))
        assert {value(r, level_tag) for r in results} == wanted
    if not path.startswith("/dicomweb/studies/"):  # searches across studies name the study
        assert all(value(r, "00100020").startswith("PID") for r in results)


# --- Chinese names (PS3.5 §6.1.2.5.3, §6.2.1.1) ----------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["Wang^XiaoDong", "王^小东", "王*", "wang*", "WANG^XIAODONG", "Wang*=王*", "*=王^小东"],
)
def test_chinese_names_are_found_in_every_character_set(shared_api, catalog, name):
    response = shared_api.client.get(
        "/dicomweb/studies", params={"PatientName": name}, headers=shared_api.headers("admin")
    )

    assert response.status_code == 200, response.text
    results = response.json()
    assert sorted(catalog.labels(results)) == sorted(CHINESE)
    for result in results:
        assert value(result, "00100010") == CHINESE_NAME_JSON
    assert "王^小东" in response.content.decode("utf-8")  # UTF-8, not \u escapes


# --- transport -------------------------------------------------------------------------------


@pytest.mark.parametrize(("accept", "encoding"), [("gzip", "gzip"), ("identity", None)])
def test_large_results_are_compressed_when_asked(shared_api, catalog, accept, encoding):
    response = qido(shared_api, "/dicomweb/studies?includefield=all", **{"Accept-Encoding": accept})

    assert response.status_code == 200
    assert response.headers.get("content-encoding") == encoding
    assert len(response.json()) == len(ALL)


# --- who sees what ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "expected"),
    [("admin", ALL), ("rg1", COUNTY1), ("site", COUNTY1), ("rad1", COUNTY1),
     ("rg2", {"S4"}), ("ref1", set())],
)  # fmt: skip
def test_each_role_sees_its_studies(shared_api, catalog, who, expected):
    results = search(shared_api, "/dicomweb/studies", who=who)

    assert sorted(catalog.labels(results)) == sorted(expected)


@pytest.mark.parametrize(
    "path",
    [
        "/dicomweb/studies?StudyInstanceUID={S1}",
        "/dicomweb/studies/{S1}/series",
        "/dicomweb/studies/{S1}/instances",
        "/dicomweb/studies/{S1}/series/{S1a}/instances",
        "/dicomweb/series?StudyInstanceUID={S1}",
        "/dicomweb/instances?SeriesInstanceUID={S1a}",
    ],
)
@pytest.mark.parametrize(("who", "sees"), [("rg2", False), ("ref1", False), ("rad1", True)])
def test_study_outside_the_scope_looks_absent(shared_api, catalog, path, who, sees):
    results = search(shared_api, catalog.expand(path), who=who)

    assert bool(results) == sees
    assert all(value(r, "0020000D") == catalog.studies["S1"] for r in results)


# --- audit -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "action", "studies"),
    [
        ("/dicomweb/studies?PatientID=PID001", "qido-study", ["S1"]),
        ("/dicomweb/studies?AccessionNumber=ACC1*", "qido-study", ["S1", "S2"]),
        ("/dicomweb/studies/{S1}/series", "qido-series", ["S1"]),
        ("/dicomweb/series?Modality=MR", "qido-series", ["S1", "S2"]),
        ("/dicomweb/studies/{S1}/series/{S1a}/instances", "qido-instance", ["S1"]),
        ("/dicomweb/instances?PatientID=PID002", "qido-instance", ["S2"]),
        ("/dicomweb/studies?PatientID=NOBODY", "qido-study", [None]),
    ],
)
def test_search_is_audited_with_the_studies_returned(shared_api, catalog, path, action, studies):
    shared_api.services.audit.flush()  # earlier tests' batched events are written first
    with shared_api.services.sessions() as session:
        last = session.scalar(select(func.max(AuditEvent.id))) or 0

    search(shared_api, catalog.expand(path), who="rad1")
    shared_api.services.audit.flush()  # searches are audited by the batched writer

    with shared_api.services.sessions() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.id > last).order_by(AuditEvent.study_uid)
        ).all()
    assert sorted(r.study_uid or "" for r in rows) == sorted(
        catalog.studies[s] if s else "" for s in studies
    )
    assert {(r.actor, r.actor_role, r.action, r.source_address) for r in rows} == {
        ("rad1", "radiologist", action, "testclient")
    }
    assert all((r.patient_pk is not None) == (r.study_uid is not None) for r in rows)
