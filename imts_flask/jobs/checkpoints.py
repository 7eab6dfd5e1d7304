"""The checkpoint-N directories the trainer saves: which are complete, copying one, pruning the rest.

transformers' Trainer saves a checkpoint into `checkpoint-N/` in a fixed order (Trainer._save_checkpoint
in transformers 5.6): the weights, then optimizer.pt, scheduler.pt and rng_state.pth, and last
`trainer_state.json`. Nothing is fsynced and nothing is renamed into place, so a host that dies in
the middle leaves a directory with some of the files, or with files cut short. A checkpoint counts
as complete only when its trainer_state.json parses and names step N, it holds model weights, and
every weight or torch file in it is as long as its own header says (safetensors) or ends with a
zip directory (torch.save). Reading that costs a few small reads per file, never the weights.
"""

import contextlib
import json
import os
import re
import secrets
import shutil

from ..errors import Conflict, ValidationFailed
from ..fsio import move_aside, safetensors_header

CHECKPOINT = re.compile(r"checkpoint-(\d+)")
TRAINER_STATE = "trainer_state.json"
# Any one of these means the checkpoint holds model weights (LoRA adapter, full model, DeepSpeed).
_WEIGHTS = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_ZIP_END = b"PK\x05\x06"  # end of central directory: the last record torch.save writes
_COPYING, _REMOVING = ".copying-", ".removing-"
_LEFTOVERS = (_COPYING, _REMOVING)


def list_checkpoints(output_dir):
    """Return the checkpoint-N directories in `output_dir`, oldest first, each with `complete`/`problem`."""
    found = []
    try:
        entries = list(os.scandir(output_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        match = CHECKPOINT.fullmatch(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        step = int(match.group(1))
        problem = incomplete_reason(entry.path, step)
        found.append(
            {
                "name": entry.name,
                "step": step,
                "path": entry.path,
                "modified_at": entry.stat().st_mtime,
                "complete": problem is None,
                "problem": problem,
                # The run's planned end as the trainer wrote it (transformers' max_steps), or None.
                "max_steps": _max_steps(entry.path) if problem is None else None,
            }
        )
    return sorted(found, key=lambda c: c["step"])


def at_the_end(checkpoint):
    """Whether a checkpoint is at (or past) its run's planned last step: nothing is left to train.

    Resuming from one is never right: with a fractional epoch count transformers resumes inside
    the unfinished epoch and trains one step past max_steps before it looks (LLAMAFACTORY_NOTES.md).
    """
    return checkpoint.get("max_steps") is not None and checkpoint["step"] >= checkpoint["max_steps"]


def latest_resumable(output_dir):
    """Return the newest complete checkpoint of `output_dir` before the run's end, or None."""
    usable = [c for c in list_checkpoints(output_dir) if c["complete"] and not at_the_end(c)]
    return usable[-1] if usable else None


def _max_steps(path):
    try:
        with open(os.path.join(path, TRAINER_STATE), encoding="utf-8") as handle:
            value = json.load(handle).get("max_steps")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def incomplete_reason(path, step):
    """Return why checkpoint directory `path` (for step `step`) cannot be resumed from, or None."""
    try:
        names = os.listdir(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if TRAINER_STATE not in names:
        return f"{TRAINER_STATE} is missing: the save did not finish"
    try:
        with open(os.path.join(path, TRAINER_STATE), encoding="utf-8") as handle:
            trainer_state = json.load(handle)
    except (OSError, ValueError):
        return f"{TRAINER_STATE} is cut short or not JSON: the save did not finish"
    if not isinstance(trainer_state, dict) or trainer_state.get("global_step") != step:
        return f"{TRAINER_STATE} does not record step {step}"
    if not any(name in names for name in _WEIGHTS) and not any(n.startswith("global_step") for n in names):
        return "it holds no model weights"
    for dirpath, _dirs, files in os.walk(path):
        for name in sorted(files):
            problem = _file_problem(os.path.join(dirpath, name))
            if problem:
                return f"{os.path.relpath(os.path.join(dirpath, name), path)} {problem}"
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as handle:
                shards = set(json.load(handle)["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "model.safetensors.index.json is cut short or not JSON"
        missing = sorted(s for s in shards if s not in names)
        if missing:
            return f"the weight shard {missing[0]} is missing"
    return None


def _file_problem(path):
    if path.endswith(".safetensors"):
        return _safetensors_problem(path)
    if path.endswith(_TORCH_SUFFIXES):
        return _torch_zip_problem(path)
    return None


def _safetensors_problem(path):
    """A safetensors file must be as long as its header says: the tensors end where it says."""
    try:
        tensors, length, size = safetensors_header(path)
    except OSError as exc:
        return f"is unreadable ({exc.strerror})"
    except ValueError as exc:
        return (
            "is cut short (its header runs past the end)"
            if "cut short" in str(exc)
            else "has a damaged header"
        )
    ends = [t["data_offsets"][1] for t in tensors.values()]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"is {size} bytes where its header says {expected}: cut short"
    return None


def _torch_zip_problem(path):
    """torch.save writes a zip file, whose last record (the end of central directory) comes last."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != b"PK\x03\x04":
                return None  # not torch's zip format: nothing to check cheaply
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 65_557))  # the record is 22 bytes plus a comment of <= 65,535
            tail = handle.read()
    except OSError as exc:
        return f"is unreadable ({exc.strerror})"
    return None if _ZIP_END in tail else "is cut short (no end of zip directory)"


def discard_incomplete(output_dir):
    """Remove the incomplete checkpoints of a job that is not running; return their names.

    They are renamed away before removal, so the trainer's own checkpoint rotation never counts
    or resumes from a half-removed one. Copies and removals that a crash cut short go too.
    """
    removed = []
    for checkpoint in list_checkpoints(output_dir):
        if not checkpoint["complete"]:
            remove_dir(checkpoint["path"])
            removed.append(checkpoint["name"])
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(output_dir):
            if name.startswith(_LEFTOVERS):  # a copy or a removal cut short by the host's death
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    return removed


def prune(output_dir, keep, protected=lambda: ()):
    """Keep the newest `keep` complete checkpoints and the `protected()` ones (the best, those an
    evaluation reads), remove the others (incomplete ones too); return their names.

    Nothing is opened while there are no more than `keep` checkpoint directories.
    """
    try:
        count = sum(1 for name in os.listdir(output_dir) if CHECKPOINT.fullmatch(name))
    except (FileNotFoundError, NotADirectoryError):
        return []
    if count <= keep:
        return []  # the common case in a cleanup round: decided by names alone, no file opened
    checkpoints = list_checkpoints(output_dir)
    complete = [c for c in checkpoints if c["complete"]]
    kept = set(protected())
    old = [c for c in complete[: max(0, len(complete) - keep)] if c["name"] not in kept]
    doomed = [c for c in checkpoints if not c["complete"]] + old
    for checkpoint in doomed:
        remove_dir(checkpoint["path"])
    return [c["name"] for c in doomed]


def remove_dir(path):
    """Rename a directory to a hidden name beside it, then remove it: it never lingers half-removed."""
    try:
        doomed = move_aside(path, os.path.dirname(path), _REMOVING + os.path.basename(path))
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def copy_checkpoint(source, output_dir):
    """Copy checkpoint directory `source` into `output_dir` under the same name, atomically.

    A copy, never hard links: the trainer may save into a directory of the same name again (a
    stop at the very step it resumed from) and would then overwrite the source's files in place.
    """
    name = os.path.basename(source.rstrip("/"))
    target = os.path.join(output_dir, name)
    partial = os.path.join(output_dir, f"{_COPYING}{name}-{secrets.token_hex(4)}")
    os.makedirs(output_dir, exist_ok=True)
    try:
        shutil.copytree(source, partial, symlinks=False)
        if os.path.isdir(target):
            remove_dir(target)
        os.rename(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(partial)
    return target


def disk_bytes(path):
    """Return the bytes a directory tree takes on disk (allocated blocks, links not followed)."""
    total = 0
    for dirpath, dirs, files in os.walk(path):
        for name in files + dirs:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


FINAL, BEST = "final", "best"
# What a checkpoint holds besides the weights: the optimizer's and scheduler's state, RNG states.
CHECKPOINT_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state")
# A run's output files that record its training, not its weights (an export or a registered
# version leaves them out).
TRAINING_RECORDS = frozenset(
    {
        "trainer_log.jsonl",
        "training_args.bin",
        "training_loss.png",
        "trainer_state.json",
        "all_results.json",
        "train_results.json",
        "eval_results.json",
    }
)


def has_weights(directory):
    """Whether a directory holds model weights (a LoRA adapter, a full model)."""
    return any(os.path.exists(os.path.join(directory, name)) for name in _WEIGHTS)


def choose_weights(output_dir, choice, best_checkpoint, field="checkpoint"):
    """The weights a request names: "final" (output_dir), "best" (the checkpoint with the lowest
    eval_loss) or "checkpoint-N"; return (its name, its path), or raise a 400 / 409 that says why."""
    choice = choice or FINAL
    if choice == FINAL:
        if not has_weights(output_dir):
            raise Conflict(
                "the job has no final weights (it stopped before its end without a final save): "
                "name one of its checkpoints",
                field=field,
            )
        return FINAL, output_dir
    if choice == BEST:
        if not best_checkpoint:
            raise ValidationFailed(
                "the job has no best checkpoint: it ran without validation, or evaluated before any save",
                field=field,
            )
        choice = best_checkpoint
    match = CHECKPOINT.fullmatch(choice)
    path = os.path.join(output_dir, choice)
    if not match or not os.path.isdir(path):
        names = [c["name"] for c in list_checkpoints(output_dir) if c["complete"]]
        raise ValidationFailed(
            f"the job has no checkpoint {choice!r}; it has: {', '.join(['final', *names]) or 'none'}",
            field=field,
        )
    problem = incomplete_reason(path, int(match.group(1)))
    if problem:
        raise ValidationFailed(f"{choice} cannot be used: {problem}", field=field)
    return choice, path
