"""Atomic, durable file writes and tolerant reads."""

import json
import os
import tempfile

import yaml

TMP_PREFIX = ".tmp-"
# libyaml's safe dumper when PyYAML has it (10 times faster), else the pure-Python one: both safe.
_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def encode(name, obj):
    """Serialise `obj` for a file called `name`: indented JSON for .json, safe_dump YAML for .yaml."""
    if name.endswith(".json"):
        return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    if name.endswith(".yaml"):
        text = yaml.dump(
            obj, Dumper=_SAFE_DUMPER, sort_keys=False, allow_unicode=True, default_flow_style=False
        )
        return text.encode("utf-8")
    return obj


def write_tree(root, files):
    """Write {relative name: object} under a new, unseen directory `root`, durably.

    No temp-and-rename per file: nobody reads `root` until the caller renames it into place. Each
    file is fsynced, then each directory, so the rename publishes complete files only.
    """
    directories = {root}
    for name, obj in files.items():
        path = os.path.join(root, name)
        directories.add(os.path.dirname(path))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(encode(name, obj))
            handle.flush()
            os.fsync(handle.fileno())
    for directory in sorted(directories, key=len, reverse=True):
        fsync_dir(directory)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path, data):
    """Write `data` to `path` so that a crash leaves the old file or the new one, never a torn one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def atomic_write_json(path, obj):
    """Write `obj` as indented JSON, atomically."""
    atomic_write_bytes(path, encode(".json", obj))


def atomic_write_yaml(path, obj):
    """Write `obj` as YAML with safe_dump, atomically."""
    atomic_write_bytes(path, encode(".yaml", obj))


def read_json(path):
    """Read a JSON object from `path`; raise ValueError if it is empty, torn or not an object."""
    with open(path, "rb") as handle:
        raw = handle.read()
    if not raw.strip():
        raise ValueError("file is empty")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def read_tail(path, max_bytes):
    """Return at most the last `max_bytes` of a file as text, starting at a line boundary."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            start = max(0, size - max_bytes)
            handle.seek(start)
            data = handle.read()
    except FileNotFoundError:
        return ""
    if start > 0:
        newline = data.find(b"\n")
        data = data[newline + 1 :] if newline >= 0 else b""
    return data.decode("utf-8", errors="replace")
