"""Checkpoints: complete or torn (a save cut short by the host's death), pruning, copying. No Flask."""

import json
import os
import zipfile

import pytest

from imts_flask.jobs import checkpoints
from imts_flask.llamafactory.configs import attempt_config, resume_refusal
from imts_flask.llamafactory.trainer_log import eta_after_resume, log_until


def _safetensors(path, values=4):
    header = json.dumps({"w": {"dtype": "F32", "shape": [values], "data_offsets": [0, 4 * values]}}).encode()
    with open(path, "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header + b"\1" * (4 * values))


def _torch_file(path):
    """torch.save's format is a zip archive; zipfile writes the same framing."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 50)


def _checkpoint(output_dir, step, state=True, max_steps=100):
    """Lay out a checkpoint in the order transformers saves one: weights, optimizer, rng, state last."""
    path = os.path.join(output_dir, f"checkpoint-{step}")
    os.makedirs(path)
    _safetensors(os.path.join(path, "adapter_model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        _torch_file(os.path.join(path, name))
    if state:
        with open(os.path.join(path, "trainer_state.json"), "w") as handle:
            json.dump({"global_step": step, "max_steps": max_steps, "log_history": []}, handle)
    return path


def _cut(path, keep):
    """Keep the first `keep` bytes of a file (a negative `keep` drops that many from its end)."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[:keep])


def test_a_whole_checkpoint_is_complete(tmp_path):
    _checkpoint(tmp_path, 40)
    [found] = checkpoints.list_checkpoints(tmp_path)
    assert found["name"] == "checkpoint-40" and found["step"] == 40
    assert found["complete"] is True and found["problem"] is None


@pytest.mark.parametrize(
    "tear, reason",
    [
        (lambda p: os.remove(os.path.join(p, "trainer_state.json")), "trainer_state.json is missing"),
        (lambda p: _cut(os.path.join(p, "trainer_state.json"), 10), "cut short or not JSON"),
        (lambda p: _cut(os.path.join(p, "adapter_model.safetensors"), -3), "cut short"),
        (lambda p: _cut(os.path.join(p, "adapter_model.safetensors"), 5), "cut short"),
        (lambda p: open(os.path.join(p, "adapter_model.safetensors"), "wb").close(), "cut short"),
        (lambda p: _cut(os.path.join(p, "optimizer.pt"), -30), "no end of zip directory"),
        (lambda p: os.remove(os.path.join(p, "adapter_model.safetensors")), "no model weights"),
        (
            lambda p: json.dump({"global_step": 39}, open(os.path.join(p, "trainer_state.json"), "w")),
            "does not record step 40",
        ),
    ],
)
def test_a_torn_checkpoint_is_never_complete(tmp_path, tear, reason):
    path = _checkpoint(tmp_path, 40)
    tear(path)
    [found] = checkpoints.list_checkpoints(tmp_path)
    assert found["complete"] is False and reason in found["problem"]


def test_a_sharded_model_needs_every_shard(tmp_path):
    path = _checkpoint(tmp_path, 10)
    os.remove(os.path.join(path, "adapter_model.safetensors"))
    _safetensors(os.path.join(path, "model-00001-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    json.dump(index, open(os.path.join(path, "model.safetensors.index.json"), "w"))
    assert "model-00002-of-00002.safetensors is missing" in checkpoints.incomplete_reason(path, 10)
    _safetensors(os.path.join(path, "model-00002-of-00002.safetensors"))
    assert checkpoints.incomplete_reason(path, 10) is None


def test_latest_resumable_skips_a_newer_torn_one_and_discard_removes_it(tmp_path):
    _checkpoint(tmp_path, 20)
    _checkpoint(tmp_path, 40)
    _checkpoint(tmp_path, 60, state=False)  # the host died while saving step 60
    assert checkpoints.latest_resumable(tmp_path)["name"] == "checkpoint-40"
    os.makedirs(tmp_path / ".copying-checkpoint-80-0a1b2c3d" / "x")  # a copy a crash cut short
    assert checkpoints.discard_incomplete(tmp_path) == ["checkpoint-60"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-20", "checkpoint-40"]
    assert checkpoints.latest_resumable(tmp_path / "nowhere") is None


def test_a_checkpoint_at_or_past_the_planned_end_is_never_resumed_from(tmp_path):
    _checkpoint(tmp_path, 80, max_steps=84)
    _checkpoint(tmp_path, 84, max_steps=84)
    _checkpoint(tmp_path, 85, max_steps=84)  # what resuming at the end of a fractional epoch saves
    listed = {c["name"]: c for c in checkpoints.list_checkpoints(tmp_path)}
    assert [checkpoints.at_the_end(listed[n]) for n in sorted(listed)] == [False, True, True]
    assert listed["checkpoint-84"]["max_steps"] == 84
    assert checkpoints.latest_resumable(tmp_path)["name"] == "checkpoint-80"


def test_prune_keeps_the_newest_complete_ones(tmp_path):
    for step in (10, 20, 30, 40):
        _checkpoint(tmp_path, step)
    open(tmp_path / "adapter_model.safetensors", "wb").write(b"final weights")
    assert checkpoints.prune(tmp_path, 2) == ["checkpoint-10", "checkpoint-20"]
    assert sorted(os.listdir(tmp_path)) == ["adapter_model.safetensors", "checkpoint-30", "checkpoint-40"]
    assert checkpoints.prune(tmp_path, 2) == []


def test_copy_is_a_copy_not_a_link(tmp_path):
    source = _checkpoint(tmp_path / "a", 40)
    copy = checkpoints.copy_checkpoint(source, str(tmp_path / "b"))
    assert copy == str(tmp_path / "b" / "checkpoint-40")
    assert checkpoints.incomplete_reason(copy, 40) is None
    weights = os.path.join(copy, "adapter_model.safetensors")
    assert os.stat(weights).st_ino != os.stat(os.path.join(source, "adapter_model.safetensors")).st_ino
    open(weights, "wb").close()  # a save into the copy truncates it in place: the source must not change
    assert checkpoints.incomplete_reason(source, 40) is None
    assert os.listdir(tmp_path / "b") == ["checkpoint-40"]  # no temporary directory left


def test_disk_bytes_counts_the_tree(tmp_path):
    _checkpoint(tmp_path, 5)
    assert checkpoints.disk_bytes(tmp_path) >= sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(tmp_path) for f in files
    )


def test_attempt_config_resumes_in_place_or_starts_over():
    config = {"output_dir": "/j/output", "overwrite_output_dir": True, "stage": "sft"}
    resumed = attempt_config(config, "/j/output/checkpoint-40")
    assert resumed["resume_from_checkpoint"] == "/j/output/checkpoint-40"
    assert resumed["overwrite_output_dir"] is False  # else LLaMA Factory deletes trainer_log.jsonl
    assert attempt_config(resumed, None) == config
    assert resume_refusal({"stage": "rm", "finetuning_type": "full"})
    assert resume_refusal({"stage": "rm", "finetuning_type": "lora"}) is None


def test_log_until_keeps_the_history_up_to_the_checkpoint(tmp_path):
    lines = [json.dumps({"current_steps": s, "total_steps": 9, "loss": 1.0 / s}) for s in range(1, 10)]
    (tmp_path / "trainer_log.jsonl").write_text("\n".join(lines) + '\n{"current_steps": 10, "tot')
    kept = log_until(tmp_path, 4).decode().splitlines()
    assert [json.loads(line)["current_steps"] for line in kept] == [1, 2, 3, 4]
    assert log_until(tmp_path / "missing", 4) == b""


def test_eta_after_a_resume_counts_only_this_runs_steps():
    # 20 steps done since resuming at step 100, in 10 s: 0.5 s a step, 80 steps to go.
    progress = {"current_step": 120, "total_steps": 200, "elapsed_seconds": 10}
    assert eta_after_resume(progress, 100) == 40
    assert eta_after_resume({**progress, "current_step": 100}, 100) is None
