from tests.factories import ct_instances, multipart_related


def test_stow_then_qido(api):
    body, ctype = multipart_related(ct_instances(3))
    r = api.client.post(
        "/dicomweb/studies", content=body, headers={**api.headers("rg1"), "Content-Type": ctype}
    )
    assert r.status_code == 200, r.text
    r = api.client.get("/dicomweb/studies", headers=api.headers("rg1"))
    assert r.status_code == 200
    assert len(r.json()) == 1
    assert r.json()[0]["00201208"]["Value"] == [3]
    r = api.client.get("/dicomweb/studies", headers=api.headers("rg2"))
    assert r.json() == []
