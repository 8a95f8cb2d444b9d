"""``cupy.cuda`` of the emulator: one device with a single multiprocessor, so
that the kernels' grids are small and their grid-stride loops take many passes."""

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
