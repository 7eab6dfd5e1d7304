"""trainer_log.jsonl, LLaMA Factory's log of a run: progress, the metric series, how a run ended.

Reads cost the same at step 10 and at step 1,000,000: progress comes from the tail of the file.
"""

import json
import os

from ..fsio import atomic_write_bytes, read_tail
from .trainer_state import early_stopped, read_state

TRAINER_LOG = "trainer_log.jsonl"


_TAIL_BYTES = 64 * 1024


_FIRST_TAIL_BYTES = 4 * 1024


def read_progress(output_dir):
    """Read progress from the tail of trainer_log.jsonl: its cost does not grow with the log.

    Returns {current_step, total_steps, progress, current_loss, learning_rate, epoch, eta_seconds,
    elapsed_seconds, steps_per_second, tokens_per_second}, or {} when the trainer has logged nothing.
    """
    path = os.path.join(output_dir, TRAINER_LOG)
    # The last few lines almost always hold a loss entry; read more only when they do not.
    progress = _progress_from(read_tail(path, _FIRST_TAIL_BYTES))
    if progress.get("current_loss") is None:
        progress = _progress_from(read_tail(path, _TAIL_BYTES))
    return progress


# Rates of steps and tokens are taken over at least this many seconds of the trainer's clock.
_RATE_SPAN_S = 2


def _progress_from(text):
    """Progress from the newest lines of a log; lines are parsed from the end, only as far as needed."""
    run, source = [], None  # the latest run's entries (newest first), the nearest loss entry
    closed, floor = False, None  # floor: the trainer's second the rates start at, once far enough back
    for line in reversed(text.splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a partial line still being appended
        if not isinstance(entry, dict) or "current_steps" not in entry:
            continue
        if source is None and "loss" in entry:
            source = entry
        if not closed:
            if run and not _same_run(entry, run[-1]):
                closed = True  # an earlier run: its clock started before this one's
            elif floor is not None and _seconds(entry.get("elapsed_time")) < floor:
                closed = True  # past the first entry of the floor's second
            else:
                run.append(entry)
                if floor is None and _span(run) >= _RATE_SPAN_S:
                    floor = _seconds(entry.get("elapsed_time"))
        timed = _seconds(run[0].get("elapsed_time")) is not None
        if source is not None and (closed or not timed):
            break
    if not run:
        return {}
    latest, source = run[0], source or {}
    step, total = latest.get("current_steps"), latest.get("total_steps")
    progress = (
        min(1.0, step / total) if isinstance(step, int) and isinstance(total, int) and total > 0 else None
    )
    return {
        "elapsed_seconds": _seconds(latest.get("elapsed_time")),
        "current_step": step,
        "total_steps": total,
        "progress": progress,
        "current_loss": source.get("loss"),
        "learning_rate": source.get("lr"),
        "epoch": latest.get("epoch", source.get("epoch")),
        "eta_seconds": _seconds(latest.get("remaining_time")),
        **_rates(run),
    }


def _same_run(earlier, later):
    before, after = _seconds(earlier.get("elapsed_time")), _seconds(later.get("elapsed_time"))
    return before is not None and after is not None and before <= after


def _span(run):
    return (_seconds(run[0].get("elapsed_time")) or 0) - (_seconds(run[-1].get("elapsed_time")) or 0)


def _rates(run):
    """Steps and tokens a second over the newest entries of the latest run (newest first).

    From differences, not LLaMA Factory's own throughput, which divides every token seen by this
    run's time and so runs high after a resume.
    """
    # The trainer's clock counts whole seconds: measure between the first entries of two seconds.
    newest = next(e for e in reversed(run) if e.get("elapsed_time") == run[0].get("elapsed_time"))
    oldest = run[-1]
    span = _span([newest, oldest])
    if span < _RATE_SPAN_S:
        # The tail spans too little of the clock's whole seconds (a fast job logging often): no
        # rate of steps, and LLaMA Factory's average of tokens, which counts those seen before a
        # resume too (the status drops it for a resumed run).
        return {
            "steps_per_second": None,
            "tokens_per_second": None,
            "tokens_average": newest.get("throughput"),
        }
    tokens = [e.get("total_tokens") for e in (newest, oldest)]
    return {
        "steps_per_second": (newest["current_steps"] - oldest["current_steps"]) / span,
        "tokens_per_second": (tokens[0] - tokens[1]) / span
        if all(isinstance(t, int) for t in tokens)
        else None,
    }


def eta_after_resume(progress, resumed_step):
    """Return the seconds left for a run that resumed at `resumed_step`, or None.

    LLaMA Factory's remaining_time divides the time of this run by every step so far, those before
    the resume included, so after a resume it promises far too little: use this run's steps only.
    """
    step, total, elapsed = (progress.get(k) for k in ("current_step", "total_steps", "elapsed_seconds"))
    if not all(isinstance(v, int) for v in (step, total, elapsed)) or step <= resumed_step or not elapsed:
        return None
    return int((total - step) * elapsed / (step - resumed_step))


def trim_log(output_dir, step):
    """Cut trainer_log.jsonl back to `step`, in whole lines, before a run resumes there in place.

    The steps after the checkpoint are trained again; without this they would appear twice, and
    a line cut short by a killed trainer would swallow the first line of the next run.
    """
    if os.path.exists(os.path.join(output_dir, TRAINER_LOG)):
        atomic_write_bytes(os.path.join(output_dir, TRAINER_LOG), log_until(output_dir, step))


def log_until(output_dir, step):
    """Return the lines of trainer_log.jsonl up to `step`, as bytes: the history a resumed run continues."""
    kept = []
    try:
        with open(os.path.join(output_dir, TRAINER_LOG), "rb") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("current_steps"), int):
                    if entry["current_steps"] <= step:
                        kept.append(line if line.endswith(b"\n") else line + b"\n")
    except FileNotFoundError:
        pass
    return b"".join(kept)


def _seconds(hms):
    """Turn LLaMA Factory's "0:01:23" remaining_time into seconds."""
    if not isinstance(hms, str):
        return None
    try:
        parts = [float(p) for p in hms.split(":")]
    except ValueError:
        return None
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return int(seconds)


FINAL_RESULTS = ("all_results.json", "train_results.json")


def training_finished(output_dir):
    """Tell whether LLaMA Factory wrote its final results (a graceful stop also exits 0)."""
    return os.path.exists(os.path.join(output_dir, FINAL_RESULTS[0]))


def reached_end(progress):
    """Whether a run's log reached its planned last step (or past it: transformers may take one
    more step when it resumes inside an unfinished epoch)."""
    step, total = progress.get("current_step"), progress.get("total_steps")
    return isinstance(step, int) and isinstance(total, int) and step >= total


def run_complete(output_dir):
    """Whether the run in `output_dir` trained to its end (or to an early stop) and saved its results,
    whoever watched it. A stop with a checkpoint also writes the final results (and exits 0), short of
    the last step.
    """
    if not training_finished(output_dir):
        return False
    return reached_end(read_progress(output_dir)) or early_stopped(read_state(output_dir))


def outcome(rc, output_dir, stop_requested, ended_early=False):
    """What a trainer's exit means: (status, progress) with status completed, stopped or failed.

    completed: exit 0 with the final results, at the planned end or past it, or ended early on a
    stalled eval_loss (LLaMA Factory's early stopping, or the monitor's `ended_early` with min_delta),
    or a run that logged no steps at all; stopped: a stop was asked for; else failed (the caller
    says why).
    """
    progress = read_progress(output_dir)
    if rc == 0 and training_finished(output_dir):
        if reached_end(progress) or not progress or ended_early or early_stopped(read_state(output_dir)):
            return "completed", progress
    if stop_requested:
        return "stopped", progress
    return "failed", progress


def read_series(output_dir, since_step=0, limit=1000):
    """Return the points of trainer_log.jsonl after `since_step`, one per step (the last wins after a
    resume): the training loss, and eval_loss at the steps the held-out data was evaluated."""
    by_step, evals = {}, {}
    try:
        with open(os.path.join(output_dir, TRAINER_LOG), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                step = entry.get("current_steps") if isinstance(entry, dict) else None
                if isinstance(step, int) and step > since_step:
                    if "loss" in entry:
                        by_step[step] = entry
                    elif "eval_loss" in entry:
                        evals[step] = entry  # an evaluation: its own line, at a step also logged or not
    except FileNotFoundError:
        return []
    points = []
    for step in sorted(by_step.keys() | evals.keys()):
        e, evaluation = by_step.get(step) or {}, evals.get(step) or {}
        points.append(
            {
                "step": step,
                "loss": e.get("loss"),
                "learning_rate": e.get("lr"),
                "epoch": e.get("epoch", evaluation.get("epoch")),
                "eval_loss": evaluation.get("eval_loss", e.get("eval_loss")),
                "elapsed_seconds": _seconds((e or evaluation).get("elapsed_time")),
            }
        )
    return points[:limit]


class NewEntries:
    """The entries of a running trainer's log, read on from where the last read ended."""

    def __init__(self, output_dir):
        self.path = os.path.join(output_dir, TRAINER_LOG)
        self.offset = 0

    def read(self):
        """Return the entries (dicts with an integer current_steps) appended since the last call."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        whole = data.rfind(b"\n") + 1  # a line being written is read next time
        self.offset += whole
        entries = []
        for line in data[:whole].splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("current_steps"), int):
                entries.append(entry)
        return entries


class EvalLossReader:
    """The eval_loss entries of a running trainer's log, read on from where the last read ended."""

    def __init__(self, output_dir):
        self.entries = NewEntries(output_dir)
        self.points = []  # (step, eval_loss), in the log's order

    def read(self):
        """Read the lines appended since the last call; return the new (step, eval_loss) points."""
        new = []
        for entry in self.entries.read():
            loss = entry.get("eval_loss")
            if isinstance(loss, (int, float)) and not isinstance(loss, bool):
                new.append((entry["current_steps"], float(loss)))
        self.points.extend(new)
        return new
