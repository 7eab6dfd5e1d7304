"""Atomic, durable file writes and tolerant reads."""

import errno
import fcntl
import json
import os
import secrets
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


def atomic_write_bytes(path, data, durable=True):
    """Write `data` to `path` so that a crash leaves the old file or the new one, never a torn one.

    `durable=False` skips the fsyncs, for a file that can be computed again (a power loss may then
    leave the old file, an empty one or none, never a torn one for a reader of a live system)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(directory)


def atomic_write_json(path, obj, durable=True):
    """Write `obj` as indented JSON, atomically (`durable`: see atomic_write_bytes)."""
    atomic_write_bytes(path, encode(".json", obj), durable)


def atomic_write_yaml(path, obj):
    """Write `obj` as YAML with safe_dump, atomically."""
    atomic_write_bytes(path, encode(".yaml", obj))


def move_aside(path, directory, prefix):
    """Rename `path` to `directory`/<prefix>-<token> (a rename: atomic, on one filesystem); return it.

    How the store, the uploads and the checkpoints remove a directory: out of sight at once (never
    listed or resumed half removed), then removed at leisure; a crash leaves only the renamed one,
    which housekeeping removes.
    """
    os.makedirs(directory, exist_ok=True)
    doomed = os.path.join(directory, f"{prefix}-{secrets.token_hex(4)}")
    os.rename(path, doomed)
    return doomed


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


SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


def safetensors_header(path):
    """Read a safetensors file's header (never its tensors): return (header, header length, file size).

    The format is 8 bytes of header length, a JSON header, then the tensors it lists. Raises
    OSError when unreadable, ValueError when the header is cut short, too large or not JSON.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if size < 8 or length > min(size - 8, SAFETENSORS_MAX_HEADER):
            raise ValueError("cut short (its header runs past the end)")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors header")
    tensors = {k: t for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)}
    return tensors, length, size


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


def filesystem_problems(directory):
    """Check what the job store needs of the filesystem under `directory`; return the problems found.

    Locks taken through two open files of one path must exclude each other (filelock uses flock;
    NFSv4 and CephFS honour it across hosts, some FUSE filesystems do not lock at all), and a rename
    over an existing file must replace it. What it cannot see from one host, whether another host's
    locks exclude this one's, the README asks of the mount.
    """
    problems = []
    probe = os.path.join(directory, f"{TMP_PREFIX}fscheck-{secrets.token_hex(4)}")
    first = second = None
    try:
        first = os.open(probe, os.O_CREAT | os.O_RDWR, 0o644)
        second = os.open(probe, os.O_RDWR)
        try:
            fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            problems.append(f"file locks are not available under {directory} ({exc.strerror})")
        else:
            try:
                fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
                problems.append(f"file locks under {directory} do not exclude each other")
            except BlockingIOError:
                pass
        atomic_write_bytes(probe, b"new")
        with open(probe, "rb") as handle:
            if handle.read() != b"new":
                problems.append(f"a rename over an existing file under {directory} does not replace it")
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            problems.append(f"{directory} cannot be written ({exc.strerror})")
        # A full disk says nothing of what the filesystem can do: a worker starting while the disk
        # is full serves (writes answer 507) instead of failing to boot.
    finally:
        for fd in (first, second):
            if fd is not None:
                os.close(fd)
        try:
            os.unlink(probe)
        except FileNotFoundError:
            pass
    return problems
