"""tensor_maps.py on a CPU: a fake driver records what the maps are made of (the GPU tests run
the real ones, bitwise against the kernels that gather by hand)."""
import ctypes

import numpy as np
import pytest

from scratch_nn.backends import tensor_maps as T


class FakeArray:
    def __init__(self, shape, ptr, itemsize=2):
        self.shape = shape
        self.size = int(np.prod(shape))
        self.nbytes = self.size * itemsize
        self.dtype = np.dtype(f"u{itemsize}")
        self.data = type("D", (), {"ptr": ptr})()

    def reshape(self, *shape):
        return FakeArray(shape, self.data.ptr, self.dtype.itemsize)


class FakeDriver:
    def __init__(self, rc=0):
        self.calls, self.rc = [], rc
        self.cuTensorMapEncodeIm2col = self._record("im2col")
        self.cuTensorMapEncodeTiled = self._record("tiled")

    def _record(self, kind):
        outer = self

        class Fn:
            argtypes = restype = None

            def __call__(self, out, *args):
                outer.calls.append((kind, args))
                ctypes.memset(out, 0xFF, T.MAP_BYTES)       # every bit set: the patch shows
                return outer.rc
        return Fn()


def _maps(monkeypatch, driver_version=13000, rc=0):
    drv = FakeDriver(rc)
    monkeypatch.setattr(T.ctypes, "CDLL", lambda name: drv)
    cupy = type("C", (), {"cuda": type("cu", (), {"runtime": type("r", (), {
        "driverGetVersion": staticmethod(lambda: driver_version)})})})
    return T.TensorMaps(cupy), drv


def test_an_im2col_map_walks_the_output_positions(monkeypatch):
    maps, drv = _maps(monkeypatch)
    x = FakeArray((512, 16, 16, 128), 1 << 20)
    m = maps.im2col(x, 3, 2, 1, pixels=64)
    kind, a = drv.calls[0]
    assert kind == "im2col" and a[0] == T.U16 and a[1] == 4 and a[2] == 1 << 20
    assert list(a[3][:4]) == [128, 16, 16, 512]                       # C, W, H, N: innermost first
    assert list(a[4][:3]) == [256, 16 * 256, 256 * 256]               # byte strides of W, H, N
    assert list(a[5][:2]) == [-1, -1] and list(a[6][:2]) == [-1, -1]  # bases -1 .. 13: 8 positions a row at stride 2
    assert (a[7], a[8]) == (64, 64) and list(a[9][:4]) == [1, 2, 2, 1]
    assert a[10:] == (T.INTERLEAVE_NONE, T.SWIZZLE_128B, T.L2_PROMOTION_128B, T.OOB_FILL_ZERO)
    assert m.shape == (1,) and m.dtype.itemsize == T.MAP_BYTES         # one 128-byte value, passed by value
    assert maps.im2col(x, 3, 2, 1, pixels=64) is m and len(drv.calls) == 1     # kept per address and shape
    maps.im2col(x, 1, 2, 0)
    assert list(drv.calls[1][1][5][:2]) == [0, 0] and list(drv.calls[1][1][6][:2]) == [0, 0]


def test_a_tiled_map_and_the_small_tensor_patch(monkeypatch):
    maps, drv = _maps(monkeypatch, driver_version=13000)
    w = FakeArray((64, 9 * 64), 4096)                                  # 73 KB: under 128 KB
    m = np.frombuffer(maps.rows(w, 128).tobytes(), np.uint64)
    kind, a = drv.calls[0]
    assert kind == "tiled" and list(a[3][:2]) == [576, 64] and list(a[4][:1]) == [1152] and list(a[5][:2]) == [64, 128]
    assert m[1] == np.uint64(0xFFFFFFFFFFFFFFFF & ~T.SMALL_TENSOR_BIT) and m[0] == np.uint64(0xFFFFFFFFFFFFFFFF)
    maps2, _ = _maps(monkeypatch, driver_version=13020)
    assert np.frombuffer(maps2.rows(w, 128).tobytes(), np.uint64)[1] == np.uint64(0xFFFFFFFFFFFFFFFF)


def test_refusals_say_why(monkeypatch):
    maps, _ = _maps(monkeypatch, rc=1)
    with pytest.raises(T.TensorMapError, match="CUresult 1.*SCRATCH_NN_NO_TMA=1"):
        maps.rows(FakeArray((64, 576), 4096), 64)
    maps, _ = _maps(monkeypatch)
    with pytest.raises(T.TensorMapError, match="16-byte aligned"):
        maps.im2col(FakeArray((2, 8, 8, 64), 4098), 3, 1, 1)
    with pytest.raises(T.TensorMapError, match="8-byte elements"):
        maps.rows(FakeArray((64, 576), 4096, itemsize=8), 64)


def test_fp32_maps_take_uint32_bits_and_32_channel_rows(monkeypatch):
    maps, drv = _maps(monkeypatch)
    maps.im2col(FakeArray((512, 16, 16, 128), 1 << 20, itemsize=4), 3, 1, 1)
    kind, a = drv.calls[0]
    assert a[0] == T.U32 and list(a[4][:3]) == [512, 16 * 512, 256 * 512] and (a[7], a[8]) == (32, 128)
    maps.rows(FakeArray((64, 9 * 64), 4096, itemsize=4), 128)
    kind, a = drv.calls[1]
    assert a[0] == T.U32 and list(a[4][:1]) == [2304] and list(a[5][:2]) == [32, 128]
    # the same address and shape as 16-bit values is another map
    maps.rows(FakeArray((64, 9 * 64), 4096), 128)
    assert len(drv.calls) == 3 and drv.calls[2][1][0] == T.U16
