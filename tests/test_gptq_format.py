import pytest
import torch

from slimformer.gptq import format as F


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("layout", ["hub", "kernel"])
def test_pack_unpack_round_trip(bits, layout):
    pack, unpack = (F.pack_rows, F.unpack_rows) if layout == "hub" else (F.pack_kernel_rows, F.unpack_kernel_rows)
    K, N = 96 if bits == 3 else 64, 40
    v = torch.randint(0, 1 << bits, (K, N), dtype=torch.int32)
    words = pack(v, bits)
    assert words.dtype == torch.int32 and words.shape == (K * bits // 32, N)
    assert torch.equal(unpack(words, bits, K), v)
    if layout == "kernel" and bits != 3:  # the kernel layout is the Hub stream
        assert torch.equal(words, F.pack_rows(v, bits))


def test_int4_word_layout_low_bits_first():
    v = torch.arange(8, dtype=torch.int32).reshape(8, 1)
    assert F.pack_rows(v, 4).item() == 0x76543210


def test_int3_straddling_words():
    # 32 values in 3 words: 10 + straddling value 10 (bits 30-31 of word 0, bit 0 of word 1) + 10 + straddling
    # value 21 (bit 31 of word 1, bits 0-1 of word 2) + 10.
    v = torch.zeros(32, 1, dtype=torch.int32)
    v[10] = 0b110  # low two bits 10 -> word0 bits 30,31 = (0,1); high bit 1 -> word1 bit 0
    v[21] = 0b011  # low bit 1 -> word1 bit 31; high bits 01 -> word2 bits 0,1
    w = F.pack_rows(v, 3).view(-1).tolist()
    u = [x & 0xFFFFFFFF for x in w]
    assert u[0] == 0b10 << 30
    assert u[1] == (1 << 0) | (1 << 31)
    assert u[2] == 0b01
    v2 = torch.randint(0, 8, (64, 3), dtype=torch.int32)
    assert torch.equal(F.unpack_rows(F.pack_rows(v2, 3), 3), v2)


def test_int3_kernel_encoding():
    # Word i of a unit: values 10i..10i+4 in the low half, 10i+5..10i+9 in the high half, fields at bits 0, 3, 7,
    # 10, 13 of each half; bit 6 / 22 of word i is bit i of value 30 / 31.
    v = torch.zeros(32, 1, dtype=torch.int32)
    v[0], v[2], v[4], v[9], v[13], v[25], v[29] = 7, 5, 3, 6, 1, 2, 7
    v[30], v[31] = 0b101, 0b011
    u = [x & 0xFFFFFFFF for x in F.pack_kernel_rows(v, 3).view(-1).tolist()]
    assert u[0] == 7 | (5 << 7) | (3 << 13) | (6 << 29) | (1 << 6) | (1 << 22)
    assert u[1] == (1 << 10) | (1 << 22)
    assert u[2] == (2 << 16) | (7 << 16 + 13) | (1 << 6)
    # Every value moves alone: a single 1 lands on one bit, and all 96 bits are used.
    seen = 0
    for r in range(32):
        for b in range(3):
            one = torch.zeros(32, 1, dtype=torch.int32)
            one[r] = 1 << b
            w = [x & 0xFFFFFFFF for x in F.pack_kernel_rows(one, 3).view(-1).tolist()]
            bits_set = [(i, j) for i in range(3) for j in range(32) if w[i] >> j & 1]
            assert len(bits_set) == 1
            seen |= 1 << (bits_set[0][0] * 32 + bits_set[0][1])
    assert seen == (1 << 96) - 1


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_native_decode_header_matches_python(bits):
    K, N = 64, 33
    v = torch.randint(0, 1 << bits, (K, N), dtype=torch.int32)
    words = F.pack_kernel_rows(v, bits)
    assert torch.equal(torch.ops.slimformer._unpack_bits(words, bits, K), v)


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="bits must be one of"):
        F.pack_rows(torch.zeros(32, 4, dtype=torch.int32), 5)
    with pytest.raises(ValueError, match="multiple of 32"):
        F.pack_rows(torch.zeros(40, 4, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        F.pack_rows(torch.full((8, 4), 16, dtype=torch.int32), 4)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        torch.ops.slimformer._unpack_bits(torch.zeros(3, 4, dtype=torch.int32), 3, 16)


@pytest.mark.parametrize("bits", [3, 4])
def test_qzeros_v1_v2(bits):
    z = torch.randint(1, 1 << bits, (3, 32), dtype=torch.int32)
    for cf in ("gptq", "gptq_v2"):
        assert torch.equal(F.zeros_from_qzeros(F.qzeros_from_zeros(z, bits, cf), bits, 32, cf), z)
    # v1 stores zero - 1: the packed value differs from v2's by one
    assert torch.equal(F.unpack_cols(F.qzeros_from_zeros(z, bits, "gptq"), bits), z - 1)
    with pytest.raises(ValueError, match="gptq_v2"):
        F.qzeros_from_zeros(torch.zeros(1, 32, dtype=torch.int32), bits, "gptq")


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits,K", [(3, 96), (4, 72)])
def test_kernel_layout_round_trip(bits, K, act_order):
    from helpers import random_hub_layer
    hub, q, zeros = random_hub_layer(K, 40 if bits == 4 else 64, bits, 32 if bits == 3 else 8, act_order=act_order)
    N = hub["scales"].shape[1]
    gs = 32 if bits == 3 else 8
    qt, sz, perm = F.to_kernel_layout(hub["qweight"], hub["qzeros"], hub["scales"],
                                      hub["g_idx"] if act_order else None, bits=bits,
                                      group_size=gs, in_features=K, out_features=N)
    assert (perm is not None) == act_order
    assert qt.shape == (-(-N // 32), K * bits // 32, 32)
    back = F.qweight_from_kernel_layout(qt, perm, bits=bits, in_features=K, out_features=N)
    assert torch.equal(back, hub["qweight"])
    W_ref = F.reference_dequantize(hub["qweight"], hub["qzeros"], hub["scales"], hub["g_idx"], bits=bits,
                                   group_size=gs, in_features=K, out_features=N)
    W_kernel_order = F.reference_tiled_dequantize(qt, sz, bits=bits, group_size=gs, in_features=K, out_features=N)
    rows = perm if act_order else torch.arange(K)
    assert torch.allclose(W_kernel_order.double(), W_ref[rows], rtol=1e-6, atol=1e-7)


def test_act_order_rejects_inconsistent_g_idx():
    g_idx = torch.tensor([0] * 20 + [1] * 12, dtype=torch.int32)
    with pytest.raises(ValueError, match="exactly group_size"):
        F.act_order_perm(g_idx[torch.randperm(32)], 16)
