"""exports.publish: a finished export moved into the exports root without following any symlink."""

import errno
import os

import pytest

from imts_flask.jobs import exports


def _staged(tmp_path, content="new"):
    staged = tmp_path / "job" / ".export-staging-1"
    (staged / "sub").mkdir(parents=True)
    (staged / "config.json").write_text(content)
    (staged / "sub" / "weights.bin").write_bytes(b"\0" * 10)
    return str(staged)


def test_publish_creates_the_parents_and_replaces_an_earlier_export(tmp_path):
    root = tmp_path / "exports"
    target = str(root / "team" / "model")
    exports.publish(_staged(tmp_path, "first"), str(root), target)
    assert open(os.path.join(target, "config.json")).read() == "first"
    exports.publish(_staged(tmp_path, "second"), str(root), target)
    assert open(os.path.join(target, "config.json")).read() == "second"
    assert os.listdir(root / "team") == ["model"]  # the earlier one moved aside and removed


def test_publish_across_filesystems_copies_then_renames(tmp_path, monkeypatch):
    real_rename = os.rename

    def cross_device(src, dst, **kwargs):
        if str(src).endswith(".export-staging-1"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", cross_device)
    root = tmp_path / "exports"
    target = str(root / "model")
    exports.publish(_staged(tmp_path), str(root), target)
    assert open(os.path.join(target, "sub", "weights.bin"), "rb").read() == b"\0" * 10
    assert os.listdir(root) == ["model"]


@pytest.mark.parametrize("where", ["parent", "target"])
def test_a_symlink_on_the_way_is_refused_and_nothing_is_written_through_it(tmp_path, where):
    root = tmp_path / "exports"
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "team").mkdir(parents=True)
    if where == "parent":
        os.rmdir(root / "team")
        os.symlink(outside, root / "team")
    else:
        os.symlink(outside, root / "team" / "model")
    with pytest.raises(exports.ExportRefused, match="symlink"):
        exports.publish(_staged(tmp_path), str(root), str(root / "team" / "model"))
    assert os.listdir(outside) == []


def test_a_target_outside_the_root_is_refused(tmp_path):
    with pytest.raises(exports.ExportRefused):
        exports.publish(_staged(tmp_path), str(tmp_path / "exports"), str(tmp_path / "elsewhere"))
