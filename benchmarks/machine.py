"""What every benchmark note prints about the machine: the CPU's name and its SIMD flags
(x86 'flags' or aarch64 'Features' of /proc/cpuinfo)."""


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "?"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith(("flags", "Features"))), [])
    simd = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "asimd", "sve")))
    return f"{name}; {' '.join(simd)}"
