"""A FAKE llamafactory-cli for fault-injection tests: writes trainer_log.jsonl lines and exits as told.

Usage (as the service calls it): fake_trainer.py [options] train CONFIG.yaml
Options: --steps N --interval S --exit CODE --fail-message TEXT --ignore-term --grandchild
         --save-every K (a checkpoint-N directory every K steps, laid out as transformers saves one)
         --export-delay S (an export that takes S seconds before it writes)
         --overshoot-on-resume (resumed at its last step, it takes one more, as transformers does with a
           fractional epoch count: LLAMAFACTORY_NOTES.md, "Resuming at the last step")
         --linger S (waits S seconds after its last step, before it writes its final results)
         --eval-losses A,B,C (with eval_strategy steps in the config: the eval_loss of each evaluation,
           every eval_steps, the last repeated; early_stopping_steps stops it as transformers'
           EarlyStoppingCallback does, and trainer_state.json records the evaluations and the best)
         --graceful-term (with enable_jit_checkpoint: SIGTERM ends the run after the current step with
           a checkpoint and the final save, exit 0, as transformers' JIT checkpoint does)
         --eval-seconds S (an evaluation run, do_train false: takes S seconds, then writes what LLaMA
           Factory's do_eval / do_predict write; tuned and base models get different figures)
         --fail-phase NAME (the evaluation phase whose output_dir is NAME exits with --exit's code)
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
    parser.add_argument("--eval-losses", default="")
    parser.add_argument("--graceful-term", action="store_true")
    parser.add_argument("--eval-seconds", type=float, default=0.2)
    parser.add_argument("--fail-phase", default="")
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

    terminated = []
    if args.graceful_term and config.get("enable_jit_checkpoint"):
        signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    elif not args.ignore_term:
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
    if config.get("do_train") is False:
        return evaluate(config, args, output_dir)
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
    evals = Evaluations(config, args.eval_losses, output_dir, args.steps)
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
        evaluated = evals.at(step, entry)
        if evaluated:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(evaluated) + "\n")
        saving = args.save_every and (step % args.save_every == 0 or step > args.steps)
        if saving or (terminated and args.save_every):
            save_weights_and_state(os.path.join(output_dir, f"checkpoint-{step}"), step, args.steps, evals)
        if terminated or evals.should_stop:
            last = step
            break
    time.sleep(args.linger)
    record_end()
    if args.exit != 0:
        print("Traceback (most recent call last):", flush=True)
        print(args.fail_message or "RuntimeError: fake failure", flush=True)
        return args.exit
    with open(log_path, "a") as handle:
        handle.write(json.dumps({"current_steps": last, "total_steps": args.steps, "epoch": 1.0}) + "\n")
    save_weights(output_dir)
    if evals.enabled:
        with open(os.path.join(output_dir, "trainer_state.json"), "w") as handle:
            json.dump(evals.state(last, args.steps), handle)
    with open(os.path.join(output_dir, "all_results.json"), "w") as handle:
        json.dump({"train_loss": 0.5}, handle)
    return 0


def evaluate(config, args, output_dir):
    """What do_eval and do_predict (predict_with_generate) leave in output_dir, without a model."""
    with open(os.path.join(config["dataset_dir"], "dataset_info.json")) as handle:
        info = json.load(handle)
    name = config["eval_dataset"].split(",")[0]
    with open(info[name]["file_name"]) as handle:
        rows = json.load(handle)[: config["max_samples"]]
    tuned = bool(config.get("adapter_name_or_path")) or config["model_name_or_path"].startswith(
        os.path.dirname(output_dir.split("/evaluations/")[0])
    )
    with open(os.path.join(os.path.dirname(os.path.dirname(output_dir)), "fake_phases.log"), "a") as handle:
        handle.write(f"{os.path.basename(output_dir)} {json.dumps(config, sort_keys=True)}\n")
    time.sleep(args.eval_seconds)
    if args.exit and os.path.basename(output_dir) == args.fail_phase:
        print("Traceback (most recent call last):", flush=True)
        print(args.fail_message or "RuntimeError: fake failure", flush=True)
        return args.exit
    if config.get("do_predict"):
        with open(os.path.join(output_dir, "generated_predictions.jsonl"), "w") as handle:
            for row in rows:
                answer = row.get("output") if tuned else "I do not know."
                prompt = f"Human: {row.get('instruction')}\nAssistant:"
                handle.write(
                    json.dumps({"prompt": prompt, "predict": answer, "label": row.get("output")}) + "\n"
                )
        figures = {"predict_bleu-4": 60.0 if tuned else 5.0, "predict_rouge-1": 70.0 if tuned else 10.0,
                   "predict_rouge-2": 50.0 if tuned else 1.0, "predict_rouge-l": 65.0 if tuned else 8.0,
                   "predict_runtime": 0.1}  # fmt: skip
    else:
        figures = {"epoch": 0, "eval_loss": 1.5 if tuned else 4.0, "eval_runtime": 0.1}
        if config.get("stage") == "rm":
            figures["eval_accuracy"] = 0.9 if tuned else 0.5
    with open(os.path.join(output_dir, "all_results.json"), "w") as handle:
        json.dump(figures, handle)
    return 0


class Evaluations:
    """Evaluations as LLaMA Factory and transformers run them: eval_loss lines in trainer_log.jsonl,
    the best checkpoint (metric eval_loss, lower is better), EarlyStoppingCallback's patience."""

    def __init__(self, config, losses, output_dir, max_steps):
        self.enabled = config.get("eval_strategy") == "steps" and bool(losses)
        self.every = config.get("eval_steps") or 1
        self.losses = [float(x) for x in losses.split(",") if x]
        self.patience = config.get("early_stopping_steps")
        self.output_dir = output_dir
        self.history, self.best, self.best_step, self.counter = [], None, None, 0
        self.should_stop = False

    def at(self, step, entry):
        if not self.enabled or step % self.every:
            return None
        loss = self.losses[min(len(self.history), len(self.losses) - 1)]
        self.history.append({"step": step, "eval_loss": loss, "eval_runtime": 0.01})
        if self.best is None or loss < self.best:
            self.best, self.best_step, self.counter = loss, step, 0
        else:
            self.counter += 1
        if self.patience and self.counter >= self.patience:
            self.should_stop = True
        return {k: entry[k] for k in ("current_steps", "total_steps", "epoch", "elapsed_time")} | {
            "eval_loss": loss
        }

    def state(self, step, max_steps):
        state = {
            "global_step": step,
            "max_steps": max_steps,
            "log_history": list(self.history),
            "best_metric": self.best,
            "best_model_checkpoint": os.path.join(self.output_dir, f"checkpoint-{self.best_step}")
            if self.best_step
            else None,
        }
        if self.patience:
            state["stateful_callbacks"] = {
                "EarlyStoppingCallback": {
                    "args": {"early_stopping_patience": self.patience, "early_stopping_threshold": 0.0},
                    "attributes": {"early_stopping_patience_counter": self.counter},
                }
            }
        return state


def save_weights(directory):
    """A valid safetensors file holding one tensor of two float32 values."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(os.path.join(directory, "adapter_model.safetensors"), "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    # What LLaMA Factory writes beside a LoRA adapter: its config and the chat template it trained with.
    with open(os.path.join(directory, "adapter_config.json"), "w") as handle:
        json.dump({"peft_type": "LORA", "r": 8, "lora_alpha": 16}, handle)
    with open(os.path.join(directory, "chat_template.jinja"), "w") as handle:
        handle.write("FAKE TEMPLATE {{ messages[-1]['content'] }}")


def save_weights_and_state(directory, step, max_steps, evals=None):
    """A checkpoint as transformers saves one: weights first, an optimizer state, trainer_state.json last."""
    os.makedirs(directory, exist_ok=True)
    save_weights(directory)
    with open(os.path.join(directory, "optimizer.pt"), "wb") as handle:
        handle.write(b"not a zip: the optimizer's state")
    state = evals.state(step, max_steps) if evals is not None and evals.enabled else {}
    with open(os.path.join(directory, "trainer_state.json"), "w") as handle:
        json.dump({**state, "global_step": step, "max_steps": max_steps}, handle)


if __name__ == "__main__":
    sys.exit(main())
