"""sitecustomize for the Windows CPython that tools/wine-python.sh runs under wine.

It patches gaps of wine 8.0 that no real Windows has, so that the project's Windows code
paths can be tested here at all. It is installed only into that interpreter (never on a
real Windows or on the host); the project's own code carries no wine workarounds.
"""

import _winapi
import os


def _parent_pid() -> int:
    """os.getppid() through NtQueryInformationProcess(ProcessBasicInformation).

    Python 3.12's os.getppid() calls kernel32's PssCaptureSnapshot, which wine 8.0 does not
    implement: the process aborts.
    """
    import ctypes

    class BasicInformation(ctypes.Structure):
        # six pointer-sized fields on x64 (ExitStatus and BasePriority are padded)
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "ExitStatus", "PebBaseAddress", "AffinityMask", "BasePriority",
            "UniqueProcessId", "InheritedFromUniqueProcessId")]

    info = BasicInformation()
    current_process = ctypes.c_void_p(-1)  # the pseudo handle GetCurrentProcess() returns
    status = ctypes.WinDLL("ntdll").NtQueryInformationProcess(
        current_process, 0, ctypes.byref(info), ctypes.sizeof(info), None)
    if status != 0:
        raise OSError("NtQueryInformationProcess: NTSTATUS 0x%08x" % (status & 0xFFFFFFFF))
    return int(info.InheritedFromUniqueProcessId)


os.getppid = _parent_pid

# shutil.copy2 (Python 3.12+) calls kernel32's CopyFile2, which wine 8.0 lacks: the process
# aborts. Without the attribute shutil takes its older path, as on Windows before 8.
if hasattr(_winapi, "CopyFile2"):
    del _winapi.CopyFile2
