"""atomic.py: the one way jaxvae writes a file that a reader or a crash may see half-written."""

import pytest

from jaxvae.atomic import atomic_path, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "summary.json"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("crash mid-write")
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_write_replaces_the_file_whole_and_makes_its_folder(tmp_path):
    out = tmp_path / "new" / "deep" / "report.html"
    assert write_text(out, "é\n") == out
    assert out.read_bytes() == "é\n".encode()
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]
