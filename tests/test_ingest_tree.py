"""The tree listing and index (components/storage.py scan_files, components/ingest/tree.py)."""

from __future__ import annotations

import os

import pytest

from mammo.components import storage
from mammo.components.ingest.reasons import RowRejected
from mammo.components.ingest.tree import check_inside_root, clean_rel, key5


def test_listing_marks_links_out_of_the_root_and_non_regular_files_without_opening_them(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "ok.dcm").write_bytes(b"x" * 10)
    (root / "a" / "inside_link.dcm").symlink_to(root / "a" / "ok.dcm")
    (tmp_path / "secret.dcm").write_bytes(b"s")
    (root / "a" / "out_link.dcm").symlink_to(tmp_path / "secret.dcm")
    (root / "a" / "dangling.dcm").symlink_to(root / "a" / "gone.dcm")
    os.mkfifo(root / "a" / "pipe.dcm")
    (root / "linked_dir").symlink_to(tmp_path)
    got = {e.rel: (e.problem, e.size) for e in storage.scan_files(root)}
    assert got == {
        "a/ok.dcm": ("", 10), "a/inside_link.dcm": ("", 10), "a/out_link.dcm": ("path_outside_root", 0),
        "a/dangling.dcm": ("not_a_regular_file", 0), "a/pipe.dcm": ("not_a_regular_file", 0),
        "linked_dir": ("path_outside_root", 0)}
    assert [e.rel for e in storage.list_files(root)] == ["a/inside_link.dcm", "a/ok.dcm"]
    with pytest.raises(storage.NotRegularFile):
        storage.read_bytes(root / "a" / "pipe.dcm")


@pytest.mark.parametrize("path", ["/etc/passwd", "../x/y", "a/../../b", "gs://other/x", "C:/x", ""])
def test_paths_leaving_the_root_are_refused(path):
    assert clean_rel(path) is None
    with pytest.raises(RowRejected) as err:
        check_inside_root(path)
    assert err.value.reason == "path_outside_root"


def test_clean_paths_and_uid_keys():
    assert clean_rel(" ./a//b/./c.dcm ") == "a/b/c.dcm"
    assert key5("07-20-2016-DDSM-74994") == "74994"
    assert key5("1.3.6.1.4.1.9590.100.1.2.422112722213189649807611434612228974994") == "74994"
    assert key5("no digits") is None
