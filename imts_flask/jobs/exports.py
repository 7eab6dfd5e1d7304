"""Where exports go: a caller's export_dir resolved inside the exports root, and a finished export
moved there so that no symlink swapped in meanwhile can send it elsewhere.

The exporter writes into a fresh directory inside the job's own directory (the service's alone);
`publish` then walks the target's parent directories from the exports root one directory descriptor
at a time, each opened with O_NOFOLLOW, creating what is missing, and renames the export in
relative to the last one (renameat). A directory replaced by a symlink anywhere on the way makes
the export fail; nothing is written through it. On another filesystem the export is copied the same
way into a hidden directory beside the target, then renamed into place.
"""

import contextlib
import errno
import os
import secrets
import shutil
import stat

from ..errors import ValidationFailed

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class ExportRefused(Exception):
    """The target cannot be written without following a symlink; the message says where."""


def resolve(exports_root, home, raw):
    """Resolve a caller's relative export_dir inside the exports root, or refuse it (ValidationFailed).

    "./models/exports/my_model" (relative to the service's home, as in the guide) and "my_model"
    (relative to the exports root) name the same place. Absolute paths, ".." and symlinks out are
    refused. Returns the absolute path.
    """
    root = os.path.realpath(exports_root)
    parts = raw.replace("\\", "/").split("/")
    if "\x00" in raw or any(len(part) > 255 for part in parts):
        raise ValidationFailed("export_dir is not a valid path", field="export_dir")
    if os.path.isabs(raw) or ".." in parts:
        raise ValidationFailed(
            "export_dir must be a relative path without '..', such as ./models/exports/my_model",
            field="export_dir",
        )
    exports = os.path.normpath(exports_root)
    under_home = os.path.normpath(os.path.join(home, raw))
    in_exports = os.path.commonpath([exports, under_home]) == exports
    path = os.path.realpath(under_home if in_exports else os.path.join(exports, raw))
    if path == root or os.path.commonpath([root, path]) != root:
        raise ValidationFailed(
            f"export_dir must name a directory inside the exports root {root}", field="export_dir"
        )
    return path


def publish(staged, exports_root, target):
    """Move the finished export `staged` to `target` under `exports_root`, replacing an earlier one.

    Raises ExportRefused when a directory on the way (or the target) is a symlink, OSError otherwise.
    """
    root = os.path.realpath(exports_root)
    relative = os.path.relpath(target, root)
    parts = relative.split(os.sep)
    if relative.startswith("..") or not all(parts) or "." in parts:
        raise ExportRefused(f"{target} is not inside the exports root {root}")
    os.makedirs(root, exist_ok=True)  # the operator's setting: the root itself may be a link
    opened = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=opened[-1])
            opened.append(_open_dir(part, opened[-1], target))
        _replace(staged, opened[-1], parts[-1], target)
    finally:
        for fd in opened:
            os.close(fd)


def _open_dir(name, parent, target):
    try:
        return os.open(name, _DIRECTORY, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ExportRefused(
                f"{name} on the way to {target} is a symlink or not a directory (it changed while exporting?)"
            ) from None
        raise


def _replace(staged, parent, name, target):
    """Rename `staged` to `name` in directory `parent`; an earlier export there is moved aside first."""
    token = secrets.token_hex(4)
    old = None
    try:
        mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if stat.S_ISLNK(mode):
            raise ExportRefused(f"{target} is a symlink (it changed while exporting?)")
        old = f".{name}.old-{token}"
        os.rename(name, old, src_dir_fd=parent, dst_dir_fd=parent)
    try:
        try:
            os.rename(staged, name, dst_dir_fd=parent)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            partial = f".{name}.partial-{token}"
            try:
                _copy_tree(staged, parent, partial)
                os.rename(partial, name, src_dir_fd=parent, dst_dir_fd=parent)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(partial, dir_fd=parent)
    except BaseException:
        if old is not None:  # the earlier export goes back where it was
            with contextlib.suppress(OSError):
                os.rename(old, name, src_dir_fd=parent, dst_dir_fd=parent)
        raise
    if old is not None:
        shutil.rmtree(old, dir_fd=parent, ignore_errors=True)


def _copy_tree(source, parent, name):
    """Copy directory `source` to a new directory `name` in `parent`, never following a symlink there."""
    os.mkdir(name, 0o755, dir_fd=parent)
    target = os.open(name, _DIRECTORY, dir_fd=parent)
    try:
        for entry in os.scandir(source):
            if entry.is_dir(follow_symlinks=False):
                _copy_tree(entry.path, target, entry.name)
            elif entry.is_file(follow_symlinks=False):
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                out = os.open(entry.name, flags, 0o644, dir_fd=target)
                with open(entry.path, "rb") as src, os.fdopen(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
    finally:
        os.close(target)
