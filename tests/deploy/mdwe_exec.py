"""`python mdwe_exec.py CMD ARGS...`: exec CMD with memory-deny-write-execute on (the kernel's
PR_SET_MDWE, Linux >= 6.3, kept across exec), the protection the units ask systemd for with
MemoryDenyWriteExecute=yes (systemd >= 257 uses this same prctl). Exits 3 if the kernel refuses."""

import ctypes
import os
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

if __name__ == "__main__":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print(f"PR_SET_MDWE: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        sys.exit(3)
    os.execvp(sys.argv[1], sys.argv[1:])
