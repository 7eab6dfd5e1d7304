"""A FAKE of NVIDIA's NVML binding (the pynvml module of nvidia-ml-py), for machines without GPUs.

It answers the calls imts_flask/gpus.py makes, as the real binding does: the same names, objects
with the same attributes, the same error classes. Tests set its devices, processes and failures.
It is not NVML; `make gpu-check` reads the real one on a GPU machine.
"""

from types import SimpleNamespace

NVML_TEMPERATURE_GPU = 0


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 (pynvml's names)
    def __str__(self):
        return "NVML Shared Library Not Found"


class NVMLError_GPUIsLost(NVMLError):  # noqa: N801
    def __str__(self):
        return "GPU is lost"


class NVMLError_InvalidArgument(NVMLError):  # noqa: N801
    def __str__(self):
        return "Invalid Argument"


class FakeNvml:
    """A module-like object: pass it where the pynvml module goes."""

    NVMLError = NVMLError
    NVMLError_GPUIsLost = NVMLError_GPUIsLost
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU

    def __init__(self, count=2, absent=False):
        self.absent = absent
        self.devices = [
            {
                "uuid": f"GPU-fake-{i:04d}",
                "name": "FAKE H100 80GB HBM3",
                "total": 80 * 2**30,
                "used": (1 + i) * 2**30,
                "utilization": 40 + i,
                "temperature": 50 + i,
                "power_mw": 300_000 + i * 1000,
                "lost": False,
                "processes": [],  # (pid, bytes)
            }
            for i in range(count)
        ]
        self.calls = 0

    def nvmlInit(self):  # noqa: N802
        if self.absent:
            raise NVMLError_LibraryNotFound()

    def nvmlSystemGetDriverVersion(self):  # noqa: N802
        return "580.95.05"

    def nvmlDeviceGetHandleByIndex(self, index):  # noqa: N802
        if not 0 <= index < len(self.devices):
            raise NVMLError_InvalidArgument()
        return self.devices[index]

    def nvmlDeviceGetHandleByUUID(self, uuid):  # noqa: N802
        for device in self.devices:
            if device["uuid"] == uuid:
                return device
        raise NVMLError_InvalidArgument()

    def _check(self, device):
        self.calls += 1
        if device["lost"]:
            raise NVMLError_GPUIsLost()
        return device

    def nvmlDeviceGetUUID(self, handle):  # noqa: N802
        return self._check(handle)["uuid"]

    def nvmlDeviceGetName(self, handle):  # noqa: N802
        return self._check(handle)["name"]

    def nvmlDeviceGetMemoryInfo(self, handle):  # noqa: N802
        device = self._check(handle)
        return SimpleNamespace(
            total=device["total"], used=device["used"], free=device["total"] - device["used"]
        )

    def nvmlDeviceGetUtilizationRates(self, handle):  # noqa: N802
        return SimpleNamespace(gpu=self._check(handle)["utilization"], memory=10)

    def nvmlDeviceGetTemperature(self, handle, sensor):  # noqa: N802
        return self._check(handle)["temperature"]

    def nvmlDeviceGetPowerUsage(self, handle):  # noqa: N802
        return self._check(handle)["power_mw"]

    def nvmlDeviceGetComputeRunningProcesses(self, handle):  # noqa: N802
        return [
            SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self._check(handle)["processes"]
        ]
