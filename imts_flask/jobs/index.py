"""The jobs index (jobs/.index/jobs.idx): one fixed-width text line per job, in creation order, so
that a listing costs what its page costs, whatever the history.

    imts-jobs-index 1 seq=1234                   (the header: a line of RECORD bytes)
    train_a1b2c3d4<TAB>completed<TAB>1764489600123456789<TAB>1764489700<TAB>123456<TAB>0.5123
    <TAB>normal<TAB>team-a<TAB>tiny-llama<TAB>demo_sft<TAB>   ...spaces to RECORD bytes, then \\n

Fields: job_id, status ("deleted" for a job removed), created_ns, finished (epoch seconds or -),
disk_bytes (or -), final loss (or -), priority, tenant (or -), model_name, dataset, and "cut" when
the last two were too long for the line (a search then reads the job's record).

The job directories stay the truth; the index is derived from them and kept by the store, under
its lock: a job's line is appended (and fsynced) before its directory is renamed into place, so a
job on disk is always listed; a status change rewrites its line in place; a delete marks it
deleted. A line cut short by a crash is a create that never happened (its directory never
appeared): it is dropped. A missing or damaged index is rebuilt from the directories, and the log
says so. `counts.json` beside it keeps the jobs by team and status (and their disk bytes) for the
listing's total and /metrics, stamped with the header's `seq`: counts of another seq (a crash
between the two writes) are counted again from the index.
"""

import json
import logging
import os

from ..errors import NotFound
from ..fsio import atomic_write_json
from ..state import creation_order, parse_time
from .record import RECORD as JobRecord

log = logging.getLogger(__name__)

RECORD = 512
HEADER = b"imts-jobs-index 1 seq="
DELETED = "deleted"
CHUNK = 256  # records read at once, from the end
_FIELDS = 11


def _text(value):
    return str(value).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def index_line(state):
    """A job's line (RECORD bytes) from its record."""
    finished = parse_time(state.finished_at)
    loss = (state.final or {}).get("current_loss")
    fields = [
        state.job_id,
        state.status or "pending",
        str(creation_order(state)[0]),
        str(int(finished.timestamp())) if finished else "-",
        str(state.disk_bytes) if isinstance(state.disk_bytes, int) else "-",
        repr(float(loss)) if isinstance(loss, (int, float)) else "-",
        state.priority or "normal",
        _text(state.tenant or "-"),
    ]
    head = "\t".join(fields)
    rest = [_text(state.model_name or ""), _text(state.dataset or "")]
    data = (head + "\t" + "\t".join(rest) + "\t").encode("utf-8")
    if len(data) > RECORD - 1:
        room = RECORD - 1 - len((head + "\t\t\tcut").encode("utf-8"))
        model = rest[0].encode("utf-8")[: room // 2].decode("utf-8", "ignore")
        dataset = rest[1].encode("utf-8")[: room - len(model.encode("utf-8"))].decode("utf-8", "ignore")
        data = (head + "\t" + model + "\t" + dataset + "\tcut").encode("utf-8")
    return data.ljust(RECORD - 1, b" ") + b"\n"


def parse(raw):
    """A line as a dict, or None if it is not a whole line of the index."""
    if len(raw) != RECORD or raw[-1:] != b"\n":
        return None
    try:
        parts = raw[:-1].decode("utf-8").rstrip(" ").split("\t")
    except UnicodeDecodeError:
        return None
    if len(parts) != _FIELDS:
        return None
    job_id, status, created, finished, disk, loss, priority, tenant, model, dataset, cut = parts
    try:
        return {
            "job_id": job_id,
            "status": status,
            "created_ns": int(created),
            "finished": None if finished == "-" else int(finished),
            "disk_bytes": None if disk == "-" else int(disk),
            "loss": None if loss == "-" else float(loss),
            "priority": priority,
            "tenant": None if tenant == "-" else tenant,
            "model_name": model,
            "dataset": dataset,
            "cut": cut == "cut",
        }
    except ValueError:
        return None


class Damaged(Exception):
    """The index cannot be read as it is: it is rebuilt."""


class JobIndex:
    def __init__(self, root, lock, states):
        """`lock()`: the store's lock of the index; `states()`: every job's record, for a rebuild."""
        self.dir = os.path.join(root, ".index")
        self.path = os.path.join(self.dir, "jobs.idx")
        self.counts_path = os.path.join(self.dir, "counts.json")
        self.lock = lock
        self.states = states
        os.makedirs(self.dir, exist_ok=True)

    # -- writing (under the lock) ----------------------------------------------------------

    def add(self, state):
        """Append a new job's line, durably (before its directory appears)."""

        def append(fd, seq):
            size = os.fstat(fd).st_size
            os.pwrite(fd, index_line(state), size - size % RECORD)
            os.ftruncate(fd, size - size % RECORD + RECORD)  # a torn line of a crashed create: gone
            os.fsync(fd)
            self._count(fd, seq, None, state)

        self._write(append)

    def put(self, state):
        """Rewrite a job's line from `state` (appended if the index lacks it)."""
        self.put_fresh(state.job_id, lambda: state)

    def put_fresh(self, job_id, read):
        """Rewrite a job's line from `read()`, its record as it is now, read under the index's lock."""

        def rewrite(fd, seq):
            try:
                state = read()  # a damaged record too: it is listed, as failed
            except NotFound:
                return
            slot, old = self._find(fd, job_id, state.created_ns)
            line = index_line(state)
            if old is not None and parse(line) == old:
                return  # it says so already
            if slot is None:
                size = os.fstat(fd).st_size
                slot = size - size % RECORD
            os.pwrite(fd, line, slot)
            self._count(fd, seq, old, state)

        self._write(rewrite)

    def remove(self, job_id, created_ns=None):
        """Mark a deleted job's line deleted (a job that never appeared: the same)."""

        def mark(fd, seq):
            slot, old = self._find(fd, job_id, created_ns)
            if slot is not None and old["status"] != DELETED:
                os.pwrite(fd, index_line(_as_state(old, status=DELETED)), slot)
                self._count(fd, seq, old, None)

        self._write(mark)

    def _write(self, change):
        """Run `change(fd, seq)` on the index under its lock; a missing or damaged one is rebuilt first."""
        with self.lock():
            for attempt in range(2):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    return change(fd, self._seq(fd))
                except Damaged as exc:
                    if attempt:
                        raise
                    reason = str(exc)
                finally:
                    os.close(fd)
                self._rebuild(reason)

    def _seq(self, fd):
        header = os.pread(fd, RECORD, 0)
        if not header:
            raise Damaged("it was missing")
        if not header.startswith(HEADER) or len(header) != RECORD:
            raise Damaged("its header is not an index's")
        return int(header[len(HEADER) :].split()[0])

    def _find(self, fd, job_id, created_ns=None):
        """(offset, parsed line) of a job's line; (None, None) if absent. Lines are in creation order,
        so with the job's created_ns a binary search finds it (and the lines around, for the few a
        repair appended out of order); else, or where that misses, a scan from the newest."""
        key = job_id.encode("ascii") + b"\t"
        if created_ns is not None:
            found = _near(fd, key, created_ns)
            if found[0] is not None:
                return found
        for offset, raw in _backwards(fd):
            if raw.startswith(key):
                line = parse(raw)
                if line is None:
                    raise Damaged(f"the line of {job_id} does not parse")
                return offset, line
        return None, None

    def _count(self, fd, seq, old, new):
        """Move a job from its old line's place in the counts to its new one, and bump seq."""
        counts = self._read_counts(fd, seq)
        for line, sign in ((old, -1), (_summary(new) if new else None, 1)):
            if line and line["status"] != DELETED:
                team = counts["jobs"].setdefault(line["tenant"] or "", {})
                team[line["status"]] = team.get(line["status"], 0) + sign
                if not team[line["status"]]:
                    del team[line["status"]]
                counts["disk_bytes"] += sign * (line["disk_bytes"] or 0)
        counts["jobs"] = {name: team for name, team in counts["jobs"].items() if team}
        counts["seq"] = seq + 1
        os.pwrite(fd, (HEADER + str(seq + 1).encode()).ljust(RECORD - 1, b" ") + b"\n", 0)
        _write_counts(self.counts_path, counts)

    def _read_counts(self, fd, seq):
        try:
            with open(self.counts_path, encoding="utf-8") as handle:
                counts = json.load(handle)
            if counts.get("seq") == seq:
                return counts
        except (OSError, ValueError):
            pass
        log.warning("jobs index: its counts are not of this index (a crash between writes); counting again")
        return _recount(fd, seq)

    # -- reading (no lock: lines are whole, written in place) ------------------------------

    def counts(self):
        """{"jobs": {tenant or "": {status: n}}, "disk_bytes": n} as the index says now."""
        for attempt in range(2):
            try:
                with open(self.counts_path, encoding="utf-8") as handle:
                    counts = json.load(handle)
                with open(self.path, "rb") as handle:
                    header = handle.read(RECORD)
                if header.startswith(HEADER) and counts.get("seq") == int(header[len(HEADER) :].split()[0]):
                    return counts
            except (OSError, ValueError):
                pass
            if attempt == 0:
                self._repair()
        return {"jobs": {}, "disk_bytes": 0}

    def newest(self):
        """Every listed job's line, newest first, read in chunks from the end."""
        if not os.path.exists(self.path):
            self._repair()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for _, raw in _backwards(fd):
                line = parse(raw)
                if line is None:
                    if raw[:1] == b"\0" or not raw.strip():
                        continue  # a line being appended: not a job yet
                    raise Damaged(f"a line does not parse: {raw[:60]!r}")
                if line["status"] != DELETED:
                    yield line
        finally:
            os.close(fd)

    def lines(self):
        """Every listed job's line (newest first); a damaged index is rebuilt where the damage is
        found, and the lines go on from the rebuilt one (none given twice)."""
        given = set()
        try:
            for line in self.newest():
                given.add(line["job_id"])
                yield line
        except Damaged as exc:
            self.rebuild(str(exc))
            yield from (line for line in self.newest() if line["job_id"] not in given)

    def _repair(self):
        """Under the lock: rebuild a missing index, count again counts of another seq."""

        def check(fd, seq):
            counts = self._read_counts(fd, seq)
            if counts.get("seq") != seq:
                counts["seq"] = seq
            _write_counts(self.counts_path, counts)

        self._write(check)

    # -- rebuilding ------------------------------------------------------------------------

    def rebuild(self, reason):
        with self.lock():
            self._rebuild(reason)

    def _rebuild(self, reason):
        """Write the index again from the job directories (the caller holds the lock)."""
        states = sorted(self.states(), key=creation_order)  # damaged records too: listed as failed
        temp = self.path + ".rebuild"
        with open(temp, "wb") as handle:
            handle.write((HEADER + b"1").ljust(RECORD - 1, b" ") + b"\n")
            for state in states:
                handle.write(index_line(state))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            _write_counts(self.counts_path, _recount(fd, 1))
        finally:
            os.close(fd)
        if states or reason != "it was missing":
            log.warning("jobs index rebuilt from %d job directories: %s", len(states), reason)


def _summary(state):
    return parse(index_line(state))


def _as_state(line, **values):
    """A job record holding what an index line says (for a line rewritten from a line)."""
    fields = ("job_id", "status", "created_ns", "disk_bytes", "priority", "tenant", "model_name", "dataset")
    return JobRecord.new(**{**{name: line[name] for name in fields}, **values})


def _backwards(fd):
    """(offset, raw line) of each line after the header, the last first."""
    size = os.fstat(fd).st_size
    end = size - size % RECORD
    while end > RECORD:
        start = max(RECORD, end - CHUNK * RECORD)
        data = os.pread(fd, end - start, start)
        for at in range(len(data) - RECORD, -1, -RECORD):
            yield start + at, data[at : at + RECORD]
        end = start


WINDOW = 64  # lines looked at on each side of where a binary search by creation time lands


def _near(fd, key, created_ns):
    """(offset, line) of the line starting with `key`, looked for where `created_ns` puts it."""
    size = os.fstat(fd).st_size
    low, high = 1, size // RECORD  # line numbers; 0 is the header
    while low < high:
        middle = (low + high) // 2
        line = parse(os.pread(fd, RECORD, middle * RECORD))
        if line is None or line["created_ns"] < created_ns:
            low = middle + 1
        else:
            high = middle
    first = max(1, low - WINDOW)
    data = os.pread(fd, (min(size // RECORD, low + WINDOW) - first) * RECORD, first * RECORD)
    for at in range(0, len(data) - RECORD + 1, RECORD):
        if data[at : at + RECORD].startswith(key):
            line = parse(data[at : at + RECORD])
            if line is not None:
                return first * RECORD + at, line
    return None, None


def _recount(fd, seq):
    counts = {"seq": seq, "jobs": {}, "disk_bytes": 0}
    for _, raw in _backwards(fd):
        line = parse(raw)
        if line is None or line["status"] == DELETED:
            continue
        team = counts["jobs"].setdefault(line["tenant"] or "", {})
        team[line["status"]] = team.get(line["status"], 0) + 1
        counts["disk_bytes"] += line["disk_bytes"] or 0
    return counts


def _write_counts(path, counts):
    """Replace counts.json (no fsync: a file lost or torn by a power loss has another seq, or none,
    and is counted again from the index)."""
    atomic_write_json(path, counts, durable=False)


def visible_total(counts, status, visible):
    """Jobs (of `status`, or every status) of the teams `visible(tenant)` allows, from the counts."""
    total = 0
    for team, by_status in counts["jobs"].items():
        if visible(team or None):
            total += by_status.get(status, 0) if status else sum(by_status.values())
    return total
