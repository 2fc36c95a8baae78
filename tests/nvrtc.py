"""NVRTC through ctypes, without CuPy or a GPU: compile CUDA sources for any architecture, so
that CI (no GPU) checks every kernel for the T4's compute_75 and the H200's sm_90. NVRTC comes
with torch's CUDA wheels (nvidia/cu13 or nvidia/cuda_nvrtc) or a CUDA toolkit; `find()` is None
where there is none."""
import ctypes
import glob
import os
import site
import sysconfig


def _candidates():
    roots = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    pats = ["nvidia/cu*/lib/libnvrtc.so.*", "nvidia/cuda_nvrtc/lib/libnvrtc.so.*"]
    for r in roots:
        for p in pats:
            yield from sorted(glob.glob(os.path.join(r, p)))
    yield from sorted(glob.glob("/usr/local/cuda*/lib64/libnvrtc.so.*"))


class Nvrtc:
    def __init__(self, path):
        lib_dir = os.path.dirname(path)
        for b in sorted(glob.glob(os.path.join(lib_dir, "libnvrtc-builtins.so.*"))):
            if ".alt." not in b:
                ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)     # NVRTC dlopens it by name
        self.lib = ctypes.CDLL(path)
        self.path = path
        inc = os.path.join(os.path.dirname(lib_dir), "include")
        self.include = inc if os.path.exists(os.path.join(inc, "cuda_fp16.h")) else None

    def compile(self, source, arch, names=(), options=("--std=c++17",), name="kernels.cu", cubin=False):
        """(ok, log, {name expression: mangled name}) of compiling `source` for `arch`
        (e.g. compute_75, sm_90, sm_90a); with cubin, the binary (for a real sm_ arch) as a fourth item."""
        lib = self.lib
        prog = ctypes.c_void_p()
        assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None) == 0
        try:
            for n in names:
                assert lib.nvrtcAddNameExpression(prog, n.encode()) == 0
            opts = [f"--gpu-architecture={arch}", *options] + ([f"--include-path={self.include}"] if self.include else [])
            arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
            rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, buf)
            lowered = {}
            if rc == 0:
                for n in names:
                    out = ctypes.c_char_p()
                    lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(out))
                    lowered[n] = out.value.decode()
            result = (rc == 0, buf.value.decode(errors="replace"), lowered)
            if cubin:
                binary = b""
                if rc == 0:
                    lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
                    out = ctypes.create_string_buffer(size.value)
                    lib.nvrtcGetCUBIN(prog, out)
                    binary = out.raw
                result += (binary,)
            return result
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


def find():
    for path in _candidates():
        try:
            return Nvrtc(path)
        except OSError:
            continue
    return None
