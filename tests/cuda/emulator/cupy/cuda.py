"""``cupy.cuda`` of the emulator: one device with a single multiprocessor, so
that the kernels' grids are small and their grid-stride loops take many passes."""

import time
import types

runtime = types.SimpleNamespace(
    getDevice=lambda: 0,
    getDeviceCount=lambda: 1,
    getDeviceProperties=lambda i: {"name": b"pyflowcore CUDA emulator", "multiProcessorCount": 1},
)


class Device:
    def __init__(self, device_id=0):
        self.id = device_id
        self.attributes = {"MultiProcessorCount": 1}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


class Event:
    """A timestamp taken when recorded (kernels run synchronously here)."""

    def __init__(self, *args, **kwargs):
        self._t = None

    def record(self, stream=None):
        self._t = time.perf_counter()

    def synchronize(self):
        pass


def get_elapsed_time(start, stop):
    """Milliseconds between two recorded events."""
    return (stop._t - start._t) * 1e3
