"""The local Hub answers nothing about the machine outside its repos, and bad queries get 400."""

import json
import os
import urllib.error
import urllib.parse
import urllib.request

import pytest

from workshop.hub_server import publish


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("X-Error-Code")


@pytest.mark.parametrize("outside", ["/etc", "/nonexistent-dir", "..", "../..", "/tmp"])
def test_tree_of_a_path_outside_the_repo_is_not_found(hub, tiny_model, outside):
    publish(hub.store.root, "org/m", tiny_model)
    path = urllib.parse.quote(outside, safe="")
    status, code = _get(f"{hub.url}/api/models/org/m/tree/main/{path}")
    assert (status, code) == (404, "EntryNotFound")


def test_a_symlink_in_a_repo_is_neither_listed_nor_served(hub, tiny_model, tmp_path):
    folder = publish(hub.store.root, "org/m", tiny_model)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub")
    os.symlink(secret, folder / "link.txt")
    os.symlink(tmp_path, folder / "linkdir")
    status, entries = _get(f"{hub.url}/api/models/org/m/tree/main?recursive=true")
    assert status == 200
    assert not [e for e in entries if e["path"].startswith(("link.txt", "linkdir"))]
    status, info = _get(f"{hub.url}/api/models/org/m")
    assert "link.txt" not in [s["rfilename"] for s in info["siblings"]]
    assert _get(f"{hub.url}/org/m/resolve/main/link.txt")[0] == 404


@pytest.mark.parametrize("query", ["limit=abc", "cursor=xyz", "limit=1.5", "cursor=-5"])
def test_a_bad_number_in_a_query_is_a_400(hub, tiny_model, query):
    publish(hub.store.root, "org/m", tiny_model)
    status, _ = _get(f"{hub.url}/api/models?{query}")
    assert status == 400
    assert _get(f"{hub.url}/api/models")[0] == 200  # and the server still answers
