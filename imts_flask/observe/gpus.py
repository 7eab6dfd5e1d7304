"""GPU figures read through NVML (NVIDIA's own binding, nvidia-ml-py), cached briefly.

No torch and no nvidia-smi: NVML is a C library the driver ships, loaded with ctypes, so an API
worker can read utilization, memory, temperature and power at the cost of a few calls, and which
processes hold GPU memory. Readings are kept `CACHE_S` seconds, so that scrapes and status reads
stay cheap. A GPU is named by the id jobs see: its NVML index (nvidia-smi's; the trainer gets
CUDA_DEVICE_ORDER=PCI_BUS_ID, so CUDA numbers the GPUs the same way) or its UUID.
"""

import logging
import threading
import time

log = logging.getLogger(__name__)

CACHE_S = 2.0


def _load_nvml():
    """Import the NVML binding, or None where it is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class Gpus:
    """Read the GPUs a service hands out (`ids`) through NVML."""

    def __init__(self, ids, nvml=None):
        self.ids = list(ids)
        self.nvml = nvml if nvml is not None else _load_nvml()
        self._initialized = False
        self._lock = threading.Lock()
        self._reading = None
        self._read_at = 0.0

    def read(self):
        """Return {"available", "error", "driver", "gpus": [...], "processes": {pid: bytes}}, cached."""
        with self._lock:
            if self._reading is None or time.monotonic() - self._read_at > CACHE_S:
                self._reading = self._read()
                self._read_at = time.monotonic()
            return self._reading

    def _init(self):
        if self._initialized:
            return None
        if self.nvml is None:
            return "nvidia-ml-py is not installed"
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as exc:
            return f"NVML cannot start: {exc} (no NVIDIA driver on this host?)"
        self._initialized = True
        return None

    def _read(self):
        reading = {"available": False, "error": None, "driver": None, "gpus": [], "processes": {}}
        if not self.ids:
            reading["error"] = "this service hands out no GPUs"
            return reading
        reading["error"] = self._init()
        if reading["error"]:
            return reading
        nvml = self.nvml
        reading["available"] = True
        try:
            reading["driver"] = _text(nvml.nvmlSystemGetDriverVersion())
        except nvml.NVMLError:
            pass
        for gpu_id in self.ids:
            reading["gpus"].append(self._device(gpu_id, reading["processes"]))
        return reading

    def _device(self, gpu_id, processes):
        nvml = self.nvml
        figures = {"id": gpu_id, "uuid": None, "name": None, "lost": False, "error": None, "processes": {}}
        try:
            if gpu_id.isdigit():
                handle = nvml.nvmlDeviceGetHandleByIndex(int(gpu_id))
            else:
                handle = nvml.nvmlDeviceGetHandleByUUID(gpu_id)
            figures["uuid"] = _text(nvml.nvmlDeviceGetUUID(handle))
            figures["name"] = _text(nvml.nvmlDeviceGetName(handle))
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            figures.update(
                utilization=nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
                memory_used_bytes=memory.used,
                memory_total_bytes=memory.total,
                temperature_celsius=nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
                power_watts=nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            )
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used = proc.usedGpuMemory if isinstance(proc.usedGpuMemory, int) else 0
                figures["processes"][proc.pid] = used
                processes[proc.pid] = processes.get(proc.pid, 0) + used
        except nvml.NVMLError as exc:
            figures["lost"] = isinstance(exc, nvml.NVMLError_GPUIsLost)
            figures["error"] = f"GPU {gpu_id}: {exc}"
            log.warning("NVML: %s", figures["error"])
        return figures

    def health(self):
        """(ok, check): each GPU with its name, memory and the driver; not ok when one is gone or lost."""
        reading = self.read()
        if not self.ids:
            return True, {"gpus": [], "detail": "no GPUs: jobs train on the CPU"}
        if not reading["available"]:
            return False, {
                "gpus": [],
                "detail": f"the GPUs {','.join(self.ids)} cannot be checked: {reading['error']}",
            }
        gpus = [
            {
                "id": g["id"],
                "name": g["name"],
                "memory_total_mb": (g.get("memory_total_bytes") or 0) // 2**20 or None,
                **({"error": g["error"]} if g["error"] else {}),
            }
            for g in reading["gpus"]
        ]
        bad = [g for g in reading["gpus"] if g["error"]]
        return not bad, {
            "gpus": gpus,
            "driver": reading["driver"],
            **({"detail": bad[0]["error"]} if bad else {}),
        }

    def memory_of(self, pids):
        """GPU memory the processes `pids` hold, in bytes, or None where NVML cannot tell."""
        by_gpu = self.memory_by_gpu(pids)
        return None if by_gpu is None else sum(by_gpu.values())

    def memory_by_gpu(self, pids):
        """{gpu id: bytes} the processes `pids` hold on each GPU they use, or None without NVML."""
        reading = self.read()
        if not reading["available"]:
            return None
        pids = set(pids)
        found = {}
        for gpu in reading["gpus"]:
            used = sum(b for pid, b in gpu["processes"].items() if pid in pids)
            if used:
                found[gpu["id"]] = used
        return found


def _text(value):
    return value.decode() if isinstance(value, bytes) else value
