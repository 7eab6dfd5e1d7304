"""The service on a real GPU: one ok/FAIL line per check. `make gpu-check` (see README, GPU check).

    python3 tools/gpu_check.py [--wheels DIR] [--pairs 3] [--allow-cpu]

Needs nothing from the network: with --wheels it first installs the Python packages the machine
lacks from a directory of wheels into this interpreter (llamafactory, flask, gunicorn, ...,
nvidia-ml-py: the list is in the README). It builds tiny-llama's tokenizer and a random-weight
Llama of about 136M parameters (hidden 1024, 12 layers) under a throw-away home, serves it with
gunicorn as deployed, and checks:

  1. a job runs on the GPU it was handed (NVML sees its trainer there) and completes
  2. status and /metrics show GPU utilization, GPU memory and tokens/s while it trains
  3. two jobs on one GPU run one after the other
  4. a stop leaves no process on the GPU, and a checkpoint saved
  5. a merged export loads and generates on CUDA
  6. API wall time against bare llamafactory-cli train on the same config: ABBA pairs, each
     pair's train_runtime beside the wall times; ok at a median ratio <= 1.02

--allow-cpu runs the same flow on a machine without GPUs (GPU checks then say skip), to check
the script itself.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

TOOLS = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(TOOLS)
MODEL = "gpu-llama-136m"
RESULTS = []


def report(ok, what, detail=""):
    word = {True: "ok", False: "FAIL", None: "skip"}[ok]
    RESULTS.append(ok)
    print(f"{word}: {what}" + (f" ({detail})" if detail else ""), flush=True)


def install_wheels(directory):
    wheels = sorted(glob.glob(os.path.join(directory, "*.whl")))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", *wheels],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"installed {len(wheels)} wheels from {directory}", flush=True)


def build_model(home):
    """tiny-llama's tokenizer and a random 136M-parameter Llama, bf16, under home/models."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    subprocess.run([sys.executable, os.path.join(TOOLS, "make_demo.py"), "--home", home], check=True)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(home, "models", "tiny-llama"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    path = os.path.join(home, "models", MODEL)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    print(f"built {path}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters", flush=True)


def gpu_pids(gpu_id):
    """Pids holding memory on a GPU, from NVML (None without NVML)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(gpu_id))
        return {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    except Exception:
        return None


def tree(pid):
    import psutil

    try:
        return {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
    except psutil.Error:
        return {pid}


def metric(text, name, labels=None):
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return sample.value
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", help="a directory of wheels to install first (no network needed)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run on a machine without GPUs (checks say skip)"
    )
    parser.add_argument("--home", help="keep the home here (default: a temporary directory)")
    args = parser.parse_args()
    if args.wheels:
        install_wheels(args.wheels)
    sys.path.insert(0, TOOLS)
    sys.path.insert(0, PROJECT)
    import bench

    from imts_flask.settings import detect_gpus

    gpus = detect_gpus()
    if not gpus and not args.allow_cpu:
        report(False, "a GPU is visible", "no CUDA_VISIBLE_DEVICES and no /proc/driver/nvidia/gpus")
        return 1
    gpu = gpus[0] if gpus else None
    home = args.home or tempfile.mkdtemp(prefix="imts-gpu-check-")
    if gpu:
        build_model(home)
    else:
        subprocess.run([sys.executable, os.path.join(TOOLS, "make_demo.py"), "--home", home], check=True)
    name = MODEL if gpu else "tiny-llama"
    custom = {"template": "default", "cutoff_len": 512, "logging_steps": 5, "save_steps": 50}
    if gpu:
        custom["bf16"] = True
    request = {
        "model_name": name,
        "dataset": "demo_sft",
        "batch_size": 8,
        "epochs": 8.0,
        "custom_config": custom,
    }
    server = bench.Server(
        os.path.join(home, "service"),
        models={name: os.path.join(home, "models", name)},
        data_dir=os.path.join(home, "data"),
        gpus=gpu or "",
    )
    base = server.base
    try:
        # 1 and 2: one job on the GPU it was handed, watched while it trains.
        job = bench._http("POST", f"{base}/jobs", request)[1]["job_id"]
        seen = {"on_gpu": False, "memory": 0, "tokens": 0, "utilization": 0, "job_memory": 0}
        while True:
            status = bench._http("GET", f"{base}/jobs/{job}")[1]
            if status["status"] != "running" and status["status"] != "pending":
                break
            if status["status"] == "running" and gpu:
                pids = gpu_pids(status["gpu_ids"][0]) or set()
                seen["on_gpu"] |= bool(pids & tree(status["pid"]))
                seen["memory"] = max(seen["memory"], status["gpu_memory_mb"] or 0)
                seen["tokens"] = max(seen["tokens"], status["tokens_per_second"] or 0)
                text = (
                    urllib.request.urlopen(server.base.replace("/api/v1/training", "/metrics"))
                    .read()
                    .decode()
                )
                seen["utilization"] = max(
                    seen["utilization"], metric(text, "imts_gpu_utilization_ratio", {"gpu": gpu}) or 0
                )
                seen["job_memory"] = max(
                    seen["job_memory"], metric(text, "imts_job_gpu_memory_bytes", {"job_id": job}) or 0
                )
            time.sleep(0.5)
        handed = status["gpu_ids"] == ([gpu] if gpu else [])
        report(
            status["status"] == "completed" and handed and (seen["on_gpu"] or not gpu),
            "1. a job runs on the GPU it was handed and completes",
            f"status {status['status']}, gpu_ids {status['gpu_ids']}, "
            f"trainer seen on GPU {gpu}: {seen['on_gpu']}",
        )
        if gpu:
            figures_ok = (
                seen["memory"] > 0
                and seen["tokens"] > 0
                and seen["utilization"] > 0
                and seen["job_memory"] > 0
            )
            report(figures_ok, "2. status and /metrics show GPU figures while it trains", json.dumps(seen))
        else:
            report(None, "2. status and /metrics show GPU figures while it trains", "no GPU")

        # 3: two jobs on one GPU, one after the other.
        first, second = (bench._http("POST", f"{base}/jobs", request)[1]["job_id"] for _ in range(2))
        waited = bench._http("GET", f"{base}/jobs/{second}")[1]
        done = [server.wait(j) for j in (first, second)]
        apart = done[0]["finished_at"] <= done[1]["started_at"]
        report(
            all(d["status"] == "completed" for d in done) and apart and waited["status"] == "pending",
            "3. two jobs on one GPU run one after the other",
            f"first {done[0]['started_at']}..{done[0]['finished_at']}, second from {done[1]['started_at']}, "
            f"queue_position {waited['queue_position']}",
        )

        # 4: a stop frees the GPU and leaves a checkpoint.
        long_job = bench._http("POST", f"{base}/jobs", {**request, "epochs": 200.0})[1]["job_id"]
        while (bench._http("GET", f"{base}/jobs/{long_job}")[1]["current_step"] or 0) < 10:
            time.sleep(0.5)
        running = bench._http("GET", f"{base}/jobs/{long_job}")[1]
        pids = tree(running["pid"])
        bench._http("POST", f"{base}/jobs/{long_job}/stop")
        stopped = server.wait(long_job)
        left = (gpu_pids(gpu) or set()) & pids if gpu else set()
        checkpoints = bench._http("GET", f"{base}/jobs/{long_job}/checkpoints")[1]["checkpoints"]
        report(
            stopped["status"] == "stopped" and not left and any(c["complete"] for c in checkpoints),
            "4. a stop leaves no process on the GPU and a checkpoint saved",
            f"processes left on the GPU: {sorted(left)}, checkpoints {[c['name'] for c in checkpoints]}",
        )

        # 5: a merged export generates on CUDA.
        exported = bench._http(
            "POST", f"{base}/jobs/{job}/export", {"export_dir": "gpu_check", "merge_lora": True}
        )[1]
        while bench._http("GET", f"{base}/jobs/{job}")[1]["export"]["status"] == "running":
            time.sleep(1)
        device = "cuda" if gpu else "cpu"
        code = (
            "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"tok = AutoTokenizer.from_pretrained(sys.argv[1]); dev = '{device}'\n"
            "model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.bfloat16).to(dev)\n"
            "ids = tok('Add two and three.', return_tensors='pt').to(dev)\n"
            "out = model.generate(**ids, max_new_tokens=4, do_sample=False)\n"
            "print('generated', out.shape[1])\n"
        )
        generated = subprocess.run(
            [sys.executable, "-c", code, exported["model_path"]],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        report(
            generated.returncode == 0 and "generated" in generated.stdout,
            f"5. a merged export loads and generates on {device}",
            generated.stdout.strip() or generated.stderr.strip()[-300:],
        )

        # 6: the wrapper costs nothing measurable.
        runs = bench.overhead_pairs(
            server, {**request, "epochs": 16.0}, args.pairs, os.path.join(home, "bare")
        )
        summary = bench.summarize_pairs(runs)
        for index, run in enumerate(runs, 1):
            print(
                f"   pair {index} ({run['order']}): API {run['api_s']:.2f} s (train_runtime "
                f"{run['api_train_runtime']:.2f}), bare {run['bare_s']:.2f} s (train_runtime "
                f"{run['bare_train_runtime']:.2f})",
                flush=True,
            )
        report(
            summary["ratio"] <= 1.02,
            "6. API / bare wall time, median",
            f"{summary['ratio']:.3f}; training loop alone {summary['loop_ratio']:.3f}",
        )
    finally:
        server.stop()
    failed = RESULTS.count(False)
    print(f"{RESULTS.count(True)} ok, {failed} FAIL, {RESULTS.count(None)} skip; home {home}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
