"""The trainer's environment: an allowlist of the service's variables, the offline switches, its GPUs."""

import os
import socket

# Variables the trainer may inherit from the service; everything else is dropped.
_PASS_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "NVIDIA_VISIBLE_DEVICES",
    "HF_HOME",
    "HF_HUB_CACHE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def trainer_env(settings, gpu_ids=None, torchrun=False, engine=False, ray_workers=0):
    """Build the trainer's environment from an allowlist, the offline switches and its GPUs.

    `gpu_ids` None means "no GPU handed out": on a service with GPUs the trainer then sees none.
    `engine` means the engine (Ray) placed the job and set CUDA_VISIBLE_DEVICES for it: kept as is.
    `torchrun` forces LLaMA Factory's torchrun launch (DeepSpeed needs it even on one GPU).
    `ray_workers` trains with LLaMA Factory's own Ray workers (USE_RAY=1), for jobs beyond a node.
    """
    env = {key: os.environ[key] for key in _PASS_ENV if key in os.environ}
    bin_dir = os.path.dirname(os.path.abspath(settings.llamafactory_cli))
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "/usr/bin:/bin")  # torchrun is looked up on PATH
    env.update(
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_CACHE=os.path.join(settings.path("cache_dir"), "datasets"),
        WANDB_DISABLED="true",
        TOKENIZERS_PARALLELISM="false",
        # CUDA numbers GPUs as NVML and nvidia-smi do, so the ids a job is handed are the ones seen.
        CUDA_DEVICE_ORDER="PCI_BUS_ID",
        USE_RAY="1" if ray_workers else "0",
    )
    if engine:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        gpu_ids = [g for g in visible.split(",") if g.strip()]
        if "CUDA_VISIBLE_DEVICES" in os.environ:
            env["CUDA_VISIBLE_DEVICES"] = visible
        if not gpu_ids and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, int(settings.ray_cpus_per_job)))  # the CPUs Ray reserved
    elif settings.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids or [])
    elif "OMP_NUM_THREADS" not in env:
        # Training on CPUs: each job gets its share of the cores. Left to torch, every job starts a
        # thread per core, and jobs sharing the cores slowed down 30-fold here.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // settings.capacity))
    if not ray_workers and (torchrun or (gpu_ids and len(gpu_ids) > 1)):
        # LLaMA Factory's torchrun launch, one process per GPU, on a port of its own.
        env.update(
            FORCE_TORCHRUN="1", NPROC_PER_NODE=str(max(1, len(gpu_ids or []))), MASTER_PORT=str(free_port())
        )
    return env
