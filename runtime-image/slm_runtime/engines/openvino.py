"""The devices OpenVINO finds on this node, read through OpenVINO's C API from the library that
onnxruntime-openvino ships beside ONNX Runtime, so that an NPU try names what is missing."""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)

_OK = 0


class _AvailableDevices(ctypes.Structure):
    """``ov_available_devices_t``."""

    _fields_ = (("devices", ctypes.POINTER(ctypes.c_char_p)), ("size", ctypes.c_size_t))


def _library_path() -> Path | None:
    """OpenVINO's C library beside ONNX Runtime's, when this is the OpenVINO build."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "capi" / "libopenvino_c.so"
    return path if path.is_file() else None


def _library() -> ctypes.CDLL | None:
    path = _library_path()
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    lib.ov_core_create.argtypes = (ctypes.POINTER(ctypes.c_void_p),)
    lib.ov_core_create.restype = ctypes.c_int
    lib.ov_core_get_available_devices.argtypes = (
        ctypes.c_void_p,
        ctypes.POINTER(_AvailableDevices),
    )
    lib.ov_core_get_available_devices.restype = ctypes.c_int
    lib.ov_available_devices_free.argtypes = (ctypes.POINTER(_AvailableDevices),)
    lib.ov_available_devices_free.restype = None
    lib.ov_core_free.argtypes = (ctypes.c_void_p,)
    lib.ov_core_free.restype = None
    return lib


def available_devices() -> list[str] | None:
    """OpenVINO's devices here (``CPU``, ``GPU.0``, ``NPU``, ...), or None when ONNX Runtime is
    not the OpenVINO build or OpenVINO cannot start."""
    try:
        lib = _library()
    except (OSError, AttributeError) as exc:
        log.debug("OpenVINO's C library cannot be loaded: %s", exc)
        return None
    if lib is None:
        return None
    core = ctypes.c_void_p()
    if lib.ov_core_create(ctypes.byref(core)) != _OK:
        return None
    try:
        found = _AvailableDevices()
        if lib.ov_core_get_available_devices(core, ctypes.byref(found)) != _OK:
            return None
        try:
            return [found.devices[i].decode() for i in range(found.size)]
        finally:
            lib.ov_available_devices_free(ctypes.byref(found))
    finally:
        lib.ov_core_free(core)


def missing_device(device_type: str, found: list[str]) -> str | None:
    """The device ``device_type`` (``NPU``, ``NPU.1`` or ``HETERO:NPU,CPU``) must run on first,
    when OpenVINO did not find it; None when it is there."""
    first = device_type.removeprefix("HETERO:").split(",", 1)[0]
    if any(name == first or (name.split(".", 1)[0] == first) for name in found):
        return None
    return first
