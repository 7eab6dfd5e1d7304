"""A FAKE llamafactory-cli for fault-injection tests: writes trainer_log.jsonl lines and exits as told.

Usage (as the service calls it): fake_trainer.py [options] train CONFIG.yaml
Options: --steps N --interval S --exit CODE --fail-message TEXT --ignore-term --grandchild
         --save-every K (a checkpoint-N directory every K steps, laid out as transformers saves one)
         --export-delay S (an export that takes S seconds before it writes)
         --overshoot-on-resume (resumed at its last step, it takes one more, as transformers does with a
           fractional epoch count: LLAMAFACTORY_NOTES.md, "Resuming at the last step")
         --linger S (waits S seconds after its last step, before it writes its final results)
With resume_from_checkpoint in the config it goes on after that checkpoint's step, and with
overwrite_output_dir it drops an old trainer_log.jsonl, as LLaMA Factory does.
It is not LLaMA Factory; end-to-end tests use the real llamafactory-cli.
"""

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time

import yaml


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--exit", type=int, default=0)
    parser.add_argument("--fail-message", default="")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--grandchild", action="store_true")
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--export-delay", type=float, default=0.0)
    parser.add_argument("--overshoot-on-resume", action="store_true")
    parser.add_argument("--linger", type=float, default=0.0)
    parser.add_argument("command")
    parser.add_argument("config")
    args = parser.parse_args()
    with open(args.config) as handle:
        config = yaml.safe_load(handle)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.grandchild:
        # A descendant in its own session, like a torchrun rank: killpg of our group misses it.
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        with open(os.path.join(os.path.dirname(args.config), "grandchild.pid"), "w") as handle:
            handle.write(str(child.pid))
    print(f"fake trainer: {args.command} {args.config}", flush=True)
    job_dir = os.path.dirname(os.path.abspath(args.config))
    # Evidence for the tests: the GPU environment it got, and when it ran (appended, one line each).
    with open(os.path.join(job_dir, "fake_env.json"), "w") as handle:
        json.dump(
            {
                k: os.environ.get(k)
                for k in (
                    "CUDA_VISIBLE_DEVICES",
                    "FORCE_TORCHRUN",
                    "NPROC_PER_NODE",
                    "USE_RAY",
                    "OMP_NUM_THREADS",
                )
            },
            handle,
        )
    with open(os.path.join(job_dir, "fake_invocation.json"), "w") as handle:
        json.dump({"argv": [args.command, args.config], "env_names": sorted(os.environ)}, handle)
    spans = os.path.join(os.path.dirname(os.path.dirname(job_dir)), "fake_spans.log")

    def record_end(signum=None, frame=None):
        with open(spans, "a") as handle:
            handle.write(f"{os.path.basename(job_dir)} end {time.time()}\n")
        if signum is not None:  # then die of the signal, as the real trainer does
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    if not args.ignore_term:
        signal.signal(signal.SIGTERM, record_end)
    with open(spans, "a") as handle:
        handle.write(f"{os.path.basename(job_dir)} start {time.time()}\n")
    if args.command == "export":
        time.sleep(args.export_delay)
        os.makedirs(config["export_dir"], exist_ok=True)
        with open(os.path.join(config["export_dir"], "config.json"), "w") as handle:
            json.dump({"fake": True}, handle)
        return args.exit
    output_dir = config["output_dir"]
    os.makedirs(output_dir, exist_ok=True)
    log_path = os.path.join(output_dir, "trainer_log.jsonl")
    first = 1
    if config.get("resume_from_checkpoint"):
        with open(os.path.join(config["resume_from_checkpoint"], "trainer_state.json")) as handle:
            first = json.load(handle)["global_step"] + 1
        with open(os.path.join(job_dir, "fake_resumes.log"), "a") as handle:
            handle.write(config["resume_from_checkpoint"] + "\n")
    elif config.get("overwrite_output_dir") and os.path.exists(log_path):
        os.remove(log_path)
    started = time.time()
    last = args.steps + 1 if args.overshoot_on_resume and first > args.steps else args.steps
    for step in range(first, last + 1):
        time.sleep(args.interval)
        elapsed = max(1, int(time.time() - started))
        entry = {
            "current_steps": step,
            "total_steps": args.steps,
            "loss": round(2.0 / step, 4),
            "lr": 1e-4,
            "epoch": step / args.steps,
            "percentage": 100 * step / args.steps,
            "elapsed_time": str(datetime.timedelta(seconds=elapsed)),
            "remaining_time": "0:00:03",
            # As LLaMA Factory logs them with include_num_input_tokens_seen: 100 tokens a step.
            "total_tokens": 100 * step,
            "throughput": round(100 * step / elapsed, 2),
        }
        with open(log_path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        if args.save_every and (step % args.save_every == 0 or step > args.steps):
            save_weights_and_state(os.path.join(output_dir, f"checkpoint-{step}"), step, args.steps)
    time.sleep(args.linger)
    record_end()
    if args.exit != 0:
        print("Traceback (most recent call last):", flush=True)
        print(args.fail_message or "RuntimeError: fake failure", flush=True)
        return args.exit
    with open(log_path, "a") as handle:
        handle.write(json.dumps({"current_steps": last, "total_steps": args.steps, "epoch": 1.0}) + "\n")
    save_weights(output_dir)
    with open(os.path.join(output_dir, "all_results.json"), "w") as handle:
        json.dump({"train_loss": 0.5}, handle)
    return 0


def save_weights(directory):
    """A valid safetensors file holding one tensor of two float32 values."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(os.path.join(directory, "adapter_model.safetensors"), "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header + b"\0" * 8)


def save_weights_and_state(directory, step, max_steps):
    """A checkpoint as transformers saves one: the weights first, trainer_state.json last."""
    os.makedirs(directory, exist_ok=True)
    save_weights(directory)
    with open(os.path.join(directory, "trainer_state.json"), "w") as handle:
        json.dump({"global_step": step, "max_steps": max_steps}, handle)


if __name__ == "__main__":
    sys.exit(main())
