// Block quantization: formats decode to the values they encode, the AVX2 integer dot products
// equal the scalar reference, and quantized matmuls stay within the format's error of F32.
#include "kernels/cpu/quant.h"

#include <cmath>
#include <cstring>
#include <random>

#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace shardserve {
namespace {

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Rows of random bytes (every byte pattern is a valid block) with finite scales: the K-quants,
// Q5_0, Q5_1 and IQ4_NL.
std::vector<uint8_t> RandomKQuantRows(DType dt, int64_t rows, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  const size_t block = DTypeBlockBytes(dt);
  std::vector<uint8_t> w(RowBytes(dt, k) * rows);
  for (uint8_t& b : w) b = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (size_t off = 0; off < w.size(); off += block) {
    const uint16_t d = F32ToF16(scale(rng)), dmin = F32ToF16(scale(rng));
    if (dt == DType::kQ4_K || dt == DType::kQ5_K || dt == DType::kQ5_1) {
      std::memcpy(&w[off], &d, 2);
      std::memcpy(&w[off + 2], &dmin, 2);
    } else if (dt == DType::kQ5_0 || dt == DType::kIQ4_NL) {
      std::memcpy(&w[off], &d, 2);
    } else {
      std::memcpy(&w[off + 208], &d, 2);
    }
  }
  return w;
}

TEST(QuantTest, Q8AndQ4RoundTripWithinHalfAStep) {
  const std::vector<float> x = Random(256, 1);
  for (DType dt : {DType::kQ8_0, DType::kQ4_0}) {
    std::vector<uint8_t> q(RowBytes(dt, 256));
    cpu::QuantizeRow(dt, x.data(), 256, q.data());
    std::vector<float> y(256);
    cpu::DequantizeRow(dt, q.data(), 256, y.data());
    for (int b = 0; b < 8; ++b) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[32 * b + i]));
      // Q8_0 rounds to the nearest of 255 symmetric steps. Q4_0 maps the largest magnitude to
      // -8 steps, so the other sign reaches only +7 steps: up to one whole step off there.
      const float bound = dt == DType::kQ8_0 ? amax / 127 * 0.5f : amax / 8;
      for (int i = 0; i < 32; ++i) {
        EXPECT_LE(std::fabs(y[32 * b + i] - x[32 * b + i]), bound + 1e-3f * amax)
            << DTypeName(dt) << " block " << b << " value " << i;
      }
    }
  }
}

// One block of Q4_0's layout (f16 d = 0.5, then 16 bytes whose low nibbles carry values 0..15
// and high nibbles values 16..31) with nibble i for value i and 15 - i for value i + 16, decoded
// as `dt`.
std::vector<float> DecodeNibbleRamp(DType dt) {
  std::vector<uint8_t> block(18);
  const uint16_t d = F32ToF16(0.5f);
  std::memcpy(block.data(), &d, 2);
  for (int i = 0; i < 16; ++i) block[2 + i] = static_cast<uint8_t>(i | ((15 - i) << 4));
  std::vector<float> y(32);
  cpu::DequantizeRow(dt, block.data(), 32, y.data());
  return y;
}

TEST(QuantTest, Q4_0LayoutMatchesGgml) {
  const std::vector<float> y = DecodeNibbleRamp(DType::kQ4_0);
  EXPECT_EQ(y[0], 0.5f * (0 - 8));
  EXPECT_EQ(y[15], 0.5f * (15 - 8));
  EXPECT_EQ(y[16], 0.5f * (15 - 8));
  EXPECT_EQ(y[31], 0.5f * (0 - 8));
}

TEST(QuantTest, Iq4NlLayoutMatchesGgml) {
  // The nibbles are Q4_0's (value i low, value i + 16 high), each an index into ggml's
  // kvalues_iq4nl.
  static constexpr int kLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                      1,    13,   25,  38,  53,  69,  89,  113};
  const std::vector<float> y = DecodeNibbleRamp(DType::kIQ4_NL);
  for (int v = 0; v < 32; ++v) {
    EXPECT_EQ(y[v], 0.5f * static_cast<float>(kLevels[v < 16 ? v : 31 - v])) << v;
  }
}

TEST(QuantTest, Q5BlocksDecode) {
  // Q5_0: d = 0.5; nibbles as Q4_0's (value i low, value i + 16 high); qh bit v is bit 4 of value
  // v; offset 16. Q5_1: d = 0.5, m = -3, the same bits unsigned.
  for (DType dt : {DType::kQ5_0, DType::kQ5_1}) {
    const bool q51 = dt == DType::kQ5_1;
    std::vector<uint8_t> block(q51 ? 24 : 22);
    const uint16_t d = F32ToF16(0.5f), m = F32ToF16(-3.0f);
    std::memcpy(block.data(), &d, 2);
    if (q51) std::memcpy(block.data() + 2, &m, 2);
    const uint32_t qh = 0xA5C3'0F01u;
    std::memcpy(block.data() + (q51 ? 4 : 2), &qh, 4);
    uint8_t* qs = block.data() + (q51 ? 8 : 6);
    for (int i = 0; i < 16; ++i) qs[i] = static_cast<uint8_t>(i | ((15 - i) << 4));
    std::vector<float> y(32);
    cpu::DequantizeRow(dt, block.data(), 32, y.data());
    for (int v = 0; v < 32; ++v) {
      const int nibble = v < 16 ? v : 15 - (v - 16);
      const int q = nibble | static_cast<int>((qh >> v) & 1) << 4;
      EXPECT_EQ(y[v], q51 ? 0.5f * q - 3.0f : 0.5f * (q - 16)) << DTypeName(dt) << " value " << v;
    }
  }
}

TEST(QuantTest, KQuantBlocksDecode) {
  // Q6_K: d = 2, scales[s] = s + 1, every 6-bit quant 33 (value 1 after the -32 offset), so
  // element e of the 256 decodes to 2 * scale(e) where scale index = e / 16.
  std::vector<uint8_t> q6(210, 0);
  for (int i = 0; i < 128; ++i) q6[i] = 0x11;       // low 4 bits 1 in both nibbles
  for (int i = 0; i < 64; ++i) q6[128 + i] = 0xAA;  // high 2 bits 2 (32) for all four lanes
  for (int s = 0; s < 16; ++s) q6[192 + s] = static_cast<uint8_t>(s + 1);
  const uint16_t two = F32ToF16(2.0f);
  std::memcpy(&q6[208], &two, 2);
  std::vector<float> y(256);
  cpu::DequantizeRow(DType::kQ6_K, q6.data(), 256, y.data());
  for (int e = 0; e < 256; ++e) EXPECT_EQ(y[e], 2.0f * (e / 16 + 1)) << e;

  // Q4_K: d = 1, dmin = 0.5, sub-block scales 1..8 and mins 1..8 (6-bit packing: the first four
  // in the low bits of bytes 0-3 and 4-7, the last four split over bytes 8-11 and the top bits),
  // every quant 3: value = scale * 3 - 0.5 * min.
  std::vector<uint8_t> q4(144, 0);
  const uint16_t one = F32ToF16(1.0f), half = F32ToF16(0.5f);
  std::memcpy(&q4[0], &one, 2);
  std::memcpy(&q4[2], &half, 2);
  uint8_t* sc = &q4[4];
  for (int j = 0; j < 4; ++j) {
    sc[j] = static_cast<uint8_t>(j + 1);
    sc[j + 4] = static_cast<uint8_t>(j + 1);
  }
  for (int j = 4; j < 8; ++j) sc[j + 4] = static_cast<uint8_t>((j + 1) | ((j + 1) << 4));
  for (int i = 0; i < 128; ++i) q4[16 + i] = 0x33;
  cpu::DequantizeRow(DType::kQ4_K, q4.data(), 256, y.data());
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32;
    EXPECT_EQ(y[e], (s + 1) * 3.0f - 0.5f * (s + 1)) << e;
  }

  // Q5_K: Q4_K's header and scales, then qh[32] and the nibbles. Bit j of qh[l] is bit 4 of value
  // l of sub-block j: qh[l] = 0x55 (even sub-blocks) for even l, 0xAA (odd ones) for odd l.
  std::vector<uint8_t> q5(176, 0);
  std::memcpy(q5.data(), q4.data(), 16);
  for (int l = 0; l < 32; ++l) q5[16 + l] = l % 2 == 0 ? 0x55 : 0xAA;
  for (int i = 0; i < 128; ++i) q5[48 + i] = 0x33;
  cpu::DequantizeRow(DType::kQ5_K, q5.data(), 256, y.data());
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32, l = e % 32;
    const int q = 3 + (s % 2 == l % 2 ? 16 : 0);
    EXPECT_EQ(y[e], (s + 1) * static_cast<float>(q) - 0.5f * (s + 1)) << e;
  }
}

TEST(QuantTest, IntegerDotFastEqualsReference) {
  for (DType dt : {DType::kQ8_0, DType::kQ4_0, DType::kIQ4_NL}) {
    const int64_t k = 320, m = 13, n = 3;
    const std::vector<float> w = Random(m * k, 2), x = Random(n * k, 3);
    std::vector<uint8_t> wq(RowBytes(dt, k) * m);
    if (dt == DType::kIQ4_NL) {
      wq = RandomKQuantRows(dt, m, k, 2);
    } else {
      for (int64_t r = 0; r < m; ++r) cpu::QuantizeRow(dt, &w[r * k], k, &wq[RowBytes(dt, k) * r]);
    }
    std::vector<cpu::Q8Block> xq(n * k / 32);
    for (int64_t i = 0; i < n; ++i) cpu::QuantizeActivations(&x[i * k], k, &xq[i * k / 32]);
    std::vector<float> out(n * m);
    cpu::Avx2QuantGemvRows(dt, wq.data(), k, xq.data(), n, k / 32, nullptr, out.data(), m, 0, m);
    std::vector<float> vnni(m);
    const bool vnni256 = cpu::CpuHasAvxVnni() && dt != DType::kIQ4_NL;  // Q8_0 / Q4_0 only
    if (vnni256) cpu::VnniQuantGemvRows1(dt, wq.data(), k, xq.data(), nullptr, vnni.data(), 0, m);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        const float ref = cpu::RefQuantDot(dt, &wq[RowBytes(dt, k) * j], &xq[i * k / 32], k);
        EXPECT_NEAR(out[i * m + j], ref, 1e-4f * (1 + std::fabs(ref))) << DTypeName(dt);
        if (i == 0 && vnni256) {
          EXPECT_NEAR(vnni[j], ref, 1e-4f * (1 + std::fabs(ref))) << DTypeName(dt) << " vnni";
        }
      }
    }
  }
}

// The AVX2 K-quant kernels (sub-block integer dots) equal the reference (decoded weights against
// each activation block) for Q4_K, Q5_K and Q6_K, at decode (1 row) and small batches, odd row
// counts and several super-blocks per row, with a bias.
TEST(QuantTest, KQuantIntegerDotEqualsReference) {
  for (DType dt : {DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    for (int64_t k : {256, 768}) {
      const int64_t m = 13, n = 3;
      const std::vector<uint8_t> wq = RandomKQuantRows(dt, m, k, 7 + static_cast<uint32_t>(k));
      const std::vector<float> x = Random(n * k, 4), bias = Random(m, 5);
      std::vector<cpu::Q8Block> xq(n * k / 32);
      for (int64_t i = 0; i < n; ++i) cpu::QuantizeActivations(&x[i * k], k, &xq[i * k / 32]);
      std::vector<float> out(n * m, -1.0f), one(m, -1.0f);
      cpu::Avx2KQuantGemvRows(dt, wq.data(), k, xq.data(), n, k / 32, bias.data(), out.data(), m, 0,
                              m);
      // Rows split unevenly, as the thread pool splits them; one activation row.
      cpu::Avx2KQuantGemvRows(dt, wq.data(), k, xq.data(), 1, k / 32, bias.data(), one.data(), m, 0,
                              5);
      cpu::Avx2KQuantGemvRows(dt, wq.data(), k, xq.data(), 1, k / 32, bias.data(), one.data(), m, 5,
                              m);
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < m; ++j) {
          const float ref =
              cpu::RefQuantDot(dt, &wq[RowBytes(dt, k) * j], &xq[i * k / 32], k) + bias[j];
          EXPECT_NEAR(out[i * m + j], ref, 1e-4f * (1 + std::fabs(ref)))
              << DTypeName(dt) << " k " << k << " row " << j << " x " << i;
          if (i == 0) {
            EXPECT_NEAR(one[j], ref, 1e-4f * (1 + std::fabs(ref))) << DTypeName(dt);
          }
        }
      }
    }
  }
}

// The AVX2 Q5_0 / Q5_1 kernel equals the reference: odd block counts, uneven row ranges, 1 and 3
// activation rows, a bias.
TEST(QuantTest, Q5IntegerDotEqualsReference) {
  for (DType dt : {DType::kQ5_0, DType::kQ5_1}) {
    const int64_t k = 352, m = 13, n = 3;
    const std::vector<uint8_t> wq = RandomKQuantRows(dt, m, k, 17);
    const std::vector<float> x = Random(n * k, 18), bias = Random(m, 19);
    std::vector<cpu::Q8Block> xq(n * k / 32);
    for (int64_t i = 0; i < n; ++i) cpu::QuantizeActivations(&x[i * k], k, &xq[i * k / 32]);
    std::vector<float> out(n * m, -1.0f);
    cpu::Avx2Q5GemvRows(dt, wq.data(), k, xq.data(), n, k / 32, bias.data(), out.data(), m, 0, 5);
    cpu::Avx2Q5GemvRows(dt, wq.data(), k, xq.data(), n, k / 32, bias.data(), out.data(), m, 5, m);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        const float ref =
            cpu::RefQuantDot(dt, &wq[RowBytes(dt, k) * j], &xq[i * k / 32], k) + bias[j];
        EXPECT_NEAR(out[i * m + j], ref, 1e-4f * (1 + std::fabs(ref)))
            << DTypeName(dt) << " row " << j << " x " << i;
      }
    }
  }
}

// The AVX-512 VNNI kernels equal the reference for all eight formats: odd and even block counts
// (Q8_0 / Q4_0 rows of 11 and 10 blocks), several super-blocks, row ranges that split the
// four-row groups, a bias, and 1 to 3 activation rows. Skipped where the CPU lacks AVX-512 VNNI.
TEST(QuantTest, Avx512VnniEqualsReference) {
  if (!cpu::CpuHasAvx512Vnni()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  for (DType dt : {DType::kQ8_0, DType::kQ4_0, DType::kQ5_0, DType::kQ5_1, DType::kIQ4_NL,
                   DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    const bool kq = dt == DType::kQ4_K || dt == DType::kQ5_K || dt == DType::kQ6_K;
    const bool random_bytes =
        kq || dt == DType::kQ5_0 || dt == DType::kQ5_1 || dt == DType::kIQ4_NL;
    for (int64_t k : kq ? std::vector<int64_t>{256, 768} : std::vector<int64_t>{320, 352}) {
      const int64_t m = 13, n = 3;
      std::vector<uint8_t> wq;
      if (random_bytes) {
        wq = RandomKQuantRows(dt, m, k, 11 + static_cast<uint32_t>(k));
      } else {
        const std::vector<float> w = Random(m * k, 6);
        wq.resize(RowBytes(dt, k) * m);
        for (int64_t r = 0; r < m; ++r) {
          cpu::QuantizeRow(dt, &w[r * k], k, &wq[RowBytes(dt, k) * r]);
        }
      }
      const std::vector<float> x = Random(n * k, 8), bias = Random(m, 9);
      std::vector<cpu::Q8Block> xq(n * k / 32);
      for (int64_t i = 0; i < n; ++i) cpu::QuantizeActivations(&x[i * k], k, &xq[i * k / 32]);
      for (int64_t rows : {int64_t{1}, n}) {
        std::vector<float> out(rows * m, -1.0f);
        // Rows split unevenly, as the thread pool splits them.
        cpu::Avx512VnniQuantGemvRows(dt, wq.data(), k, xq.data(), rows, k / 32, bias.data(),
                                     out.data(), m, 0, 6);
        cpu::Avx512VnniQuantGemvRows(dt, wq.data(), k, xq.data(), rows, k / 32, bias.data(),
                                     out.data(), m, 6, m);
        for (int64_t i = 0; i < rows; ++i) {
          for (int64_t j = 0; j < m; ++j) {
            const float ref =
                cpu::RefQuantDot(dt, &wq[RowBytes(dt, k) * j], &xq[i * k / 32], k) + bias[j];
            EXPECT_NEAR(out[i * m + j], ref, 1e-4f * (1 + std::fabs(ref)))
                << DTypeName(dt) << " k " << k << " row " << j << " x " << i << " of " << rows;
          }
        }
      }
    }
  }
}

// Q4_0, IQ4_NL, Q4_K and Q6_K repacked into groups of 16 interleaved rows: the kernels equal the
// reference for 1 to 13 activation rows (the 8-row tile and every remainder), 3 groups split
// 1 + 2 as the thread pool splits them, two widths, with a bias and without. K-quant rows are
// random bytes, so every bit of the packed scales, mins and high bits is exercised.
TEST(QuantTest, RepackedRowsEqualReference) {
  if (!cpu::CpuHasAvx512Vnni()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  const int64_t m = 48;
  for (DType dt : {DType::kQ4_0, DType::kIQ4_NL, DType::kQ4_K, DType::kQ6_K}) {
    const bool kq = dt == DType::kQ4_K || dt == DType::kQ6_K;
    for (int64_t k : kq ? std::vector<int64_t>{256, 2048} : std::vector<int64_t>{96, 2048}) {
      const size_t row_bytes = RowBytes(dt, k);
      std::vector<uint8_t> wq;
      if (dt != DType::kQ4_0) {
        wq = RandomKQuantRows(dt, m, k, 31);
      } else {
        const std::vector<float> w = Random(m * k, 21);
        wq.resize(row_bytes * m);
        for (int64_t r = 0; r < m; ++r) cpu::QuantizeRow(dt, &w[r * k], k, &wq[row_bytes * r]);
      }
      const cpu::Repacked* f = cpu::RepackedFormat(dt, k);
      ASSERT_NE(f, nullptr) << DTypeName(dt);
      std::vector<uint8_t> packed(f->group_bytes(k) * (m / 16));
      ASSERT_EQ(packed.size(), wq.size());
      f->repack(wq.data(), m, k, packed.data());
      const auto rows = f->rows;
      const int64_t n_max = 13;
      const std::vector<float> x = Random(n_max * k, 22), bias = Random(m, 23);
      std::vector<cpu::Q8Block> xq(n_max * k / 32);
      for (int64_t i = 0; i < n_max; ++i) cpu::QuantizeActivations(&x[i * k], k, &xq[i * k / 32]);
      for (int64_t n = 1; n <= n_max; ++n) {
        for (const float* b : {bias.data(), static_cast<const float*>(nullptr)}) {
          std::vector<float> out(n * m, -1.0f);
          rows(packed.data(), k, xq.data(), n, k / 32, b, out.data(), m, 0, 16);
          rows(packed.data(), k, xq.data(), n, k / 32, b, out.data(), m, 16, m);
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t j = 0; j < m; ++j) {
              const float ref = cpu::RefQuantDot(dt, &wq[row_bytes * j], &xq[i * k / 32], k) +
                                (b != nullptr ? b[j] : 0.0f);
              ASSERT_NEAR(out[i * m + j], ref, 1e-4f * (1 + std::fabs(ref)))
                  << DTypeName(dt) << " k " << k << " row " << j << " x " << i << " of " << n;
            }
          }
        }
      }
    }
  }
}

// The AVX-512 VNNI panel GEMM (prefill) equals the reference for all eight formats: 9 and 13
// activation rows (a full eight-row tile and a remainder), 37 weight rows (a partial panel),
// ranges that start mid-panel, and a bias.
TEST(QuantTest, Avx512VnniGemmEqualsReference) {
  if (!cpu::CpuHasAvx512Vnni()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  for (DType dt : {DType::kQ8_0, DType::kQ4_0, DType::kQ5_0, DType::kQ5_1, DType::kIQ4_NL,
                   DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    const bool kq = dt == DType::kQ4_K || dt == DType::kQ5_K || dt == DType::kQ6_K;
    const bool random_bytes =
        kq || dt == DType::kQ5_0 || dt == DType::kQ5_1 || dt == DType::kIQ4_NL;
    for (int64_t k : kq ? std::vector<int64_t>{256, 768} : std::vector<int64_t>{96, 352}) {
      const int64_t m = 37;
      std::vector<uint8_t> wq;
      if (random_bytes) {
        wq = RandomKQuantRows(dt, m, k, 13 + static_cast<uint32_t>(k));
      } else {
        const std::vector<float> w = Random(m * k, 10);
        wq.resize(RowBytes(dt, k) * m);
        for (int64_t r = 0; r < m; ++r) {
          cpu::QuantizeRow(dt, &w[r * k], k, &wq[RowBytes(dt, k) * r]);
        }
      }
      for (int64_t n : {9, 13}) {
        const std::vector<float> x = Random(n * k, 11), bias = Random(m, 12);
        std::vector<cpu::Q8Block> xq(n * k / 32);
        for (int64_t i = 0; i < n; ++i) cpu::QuantizeActivations(&x[i * k], k, &xq[i * k / 32]);
        std::vector<float> out(n * m, -1.0f);
        cpu::Avx512VnniQuantGemmRows(dt, wq.data(), k, xq.data(), n, k / 32, bias.data(),
                                     out.data(), m, 0, 21);
        cpu::Avx512VnniQuantGemmRows(dt, wq.data(), k, xq.data(), n, k / 32, bias.data(),
                                     out.data(), m, 21, m);
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j < m; ++j) {
            const float ref =
                cpu::RefQuantDot(dt, &wq[RowBytes(dt, k) * j], &xq[i * k / 32], k) + bias[j];
            ASSERT_NEAR(out[i * m + j], ref, 1e-4f * (1 + std::fabs(ref)))
                << DTypeName(dt) << " k " << k << " row " << j << " x " << i << " of " << n;
          }
        }
      }
    }
  }
}

// The backend's K-quant, Q5 and IQ4_NL decode (activations quantized to Q8 blocks, integer
// dots) tracks the F32 product of the decoded weights within the activations' quantization error.
TEST(QuantTest, KQuantDecodeTracksTheDecodedWeights) {
  for (DType dt :
       {DType::kQ4_K, DType::kQ5_K, DType::kQ6_K, DType::kQ5_0, DType::kQ5_1, DType::kIQ4_NL}) {
    for (int64_t n : {int64_t{1}, int64_t{3}}) {
      const int64_t k = 512, m = 70;
      const std::vector<uint8_t> wq = RandomKQuantRows(dt, m, k, 11);
      std::vector<float> w(m * k);
      for (int64_t r = 0; r < m; ++r)
        cpu::DequantizeRow(dt, &wq[RowBytes(dt, k) * r], k, &w[r * k]);
      const std::vector<float> x = Random(n * k, 6);
      std::vector<float> exact(n * m), fast(n * m);
      auto f32 = NewCpuBackend({.threads = 2});
      f32->MatMul(Tensor::Of(const_cast<float*>(x.data()), DType::kF32, n, k),
                  Tensor::Of(w.data(), DType::kF32, m, k), nullptr,
                  Tensor::Of(exact.data(), DType::kF32, n, m));
      f32->MatMul(Tensor::Of(const_cast<float*>(x.data()), DType::kF32, n, k),
                  Tensor::Of(const_cast<uint8_t*>(wq.data()), dt, m, k), nullptr,
                  Tensor::Of(fast.data(), DType::kF32, n, m));
      double err = 0, norm = 0;
      for (int64_t i = 0; i < n * m; ++i) {
        err += (fast[i] - exact[i]) * (fast[i] - exact[i]);
        norm += exact[i] * exact[i];
      }
      EXPECT_LT(std::sqrt(err / norm), 0.02) << DTypeName(dt) << " n " << n;
    }
  }
}

// IQ4_NL, Q4_K and Q6_K matrices are repacked at load where the CPU has AVX-512 VNNI: the backend's
// MatMul on the repacked weights equals its MatMul on the file's layout, and both track the
// decoded weights in F32, for decode (1, 3 rows) and prefill (20 rows, the int8 GEMM's size).
TEST(QuantTest, RepackedMatMulEqualsTheFileLayout) {
  if (!cpu::CpuHasAvx512Vnni()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  for (DType dt : {DType::kIQ4_NL, DType::kQ4_K, DType::kQ6_K}) {
    const int64_t k = 512, m = 96;
    const std::vector<uint8_t> wq = RandomKQuantRows(dt, m, k, 41);
    std::vector<float> w(m * k);
    for (int64_t r = 0; r < m; ++r) cpu::DequantizeRow(dt, &wq[RowBytes(dt, k) * r], k, &w[r * k]);
    auto backend = NewCpuBackend({.threads = 2});
    Tensor file = Tensor::Of(const_cast<uint8_t*>(wq.data()), dt, m, k);
    auto packed = backend->PackForMatMul(file);
    ASSERT_TRUE(packed.ok()) << packed.status();
    ASSERT_NE(*packed, nullptr) << DTypeName(dt);
    Tensor repacked = file;
    repacked.packed = (*packed)->data();
    for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{20}}) {
      const std::vector<float> x = Random(n * k, 42);
      std::vector<float> exact(n * m), from_file(n * m), from_packed(n * m);
      const Tensor xt = Tensor::Of(const_cast<float*>(x.data()), DType::kF32, n, k);
      backend->MatMul(xt, Tensor::Of(w.data(), DType::kF32, m, k), nullptr,
                      Tensor::Of(exact.data(), DType::kF32, n, m));
      backend->MatMul(xt, file, nullptr, Tensor::Of(from_file.data(), DType::kF32, n, m));
      backend->MatMul(xt, repacked, nullptr, Tensor::Of(from_packed.data(), DType::kF32, n, m));
      double err = 0, norm = 0, scale = 0;
      for (int64_t i = 0; i < n * m; ++i) {
        err += (from_packed[i] - exact[i]) * (from_packed[i] - exact[i]);
        norm += exact[i] * exact[i];
        scale = std::max<double>(scale, std::fabs(exact[i]));
      }
      // The activations' int8 rounding is the only error against F32 (about 1%).
      EXPECT_LT(std::sqrt(err / norm), 0.02) << DTypeName(dt) << " n " << n;
      for (int64_t i = 0; i < n * m; ++i) {
        ASSERT_NEAR(from_packed[i], from_file[i], 1e-5 * scale)
            << DTypeName(dt) << " n " << n << " at " << i;
      }
    }
  }
}

class QuantMatMulTest : public ::testing::TestWithParam<std::tuple<DType, int64_t>> {};

TEST_P(QuantMatMulTest, BackendTracksF32WithinFormatError) {
  const auto [dt, n] = GetParam();
  const int64_t k = 256, m = 96;
  const std::vector<float> w = Random(m * k, 4), x = Random(n * k, 5);
  std::vector<uint8_t> wq(RowBytes(dt, k) * m);
  for (int64_t r = 0; r < m; ++r) cpu::QuantizeRow(dt, &w[r * k], k, &wq[RowBytes(dt, k) * r]);
  std::vector<float> exact(n * m), ref(n * m);
  auto f32 = NewCpuBackend({.threads = 2});
  f32->MatMul(Tensor::Of(const_cast<float*>(x.data()), DType::kF32, n, k),
              Tensor::Of(const_cast<float*>(w.data()), DType::kF32, m, k), nullptr,
              Tensor::Of(exact.data(), DType::kF32, n, m));
  // With `pack`, the weights in the backend's own layout (PackForMatMul), as stages load them.
  auto run = [&](const CpuBackendOptions& o, std::vector<float>* out, bool pack) {
    out->assign(n * m, 0.0f);
    auto backend = NewCpuBackend(o);
    Tensor wt = Tensor::Of(wq.data(), dt, m, k);
    std::unique_ptr<Buffer> packed;
    if (pack) {
      auto p = backend->PackForMatMul(wt);
      ASSERT_TRUE(p.ok()) << p.status();
      packed = *std::move(p);
      // Q4_0 is repacked where the CPU has AVX-512 VNNI (and the backend may use it and copy
      // weights); Q8_0 never is.
      EXPECT_EQ(packed != nullptr, dt == DType::kQ4_0 && o.avx512 && !o.reference &&
                                       o.copy_weights && cpu::CpuHasAvx512Vnni());
      if (packed != nullptr) wt.packed = packed->data();
    }
    backend->MatMul(Tensor::Of(const_cast<float*>(x.data()), DType::kF32, n, k), wt, nullptr,
                    Tensor::Of(out->data(), DType::kF32, n, m));
  };
  run({.threads = 2, .reference = true}, &ref, false);
  // The fast paths this CPU has (AVX-512 VNNI where present, on the file's layout and on the
  // backend's), and the AVX2 path, forced.
  for (auto [avx512, pack] :
       {std::pair{true, false}, std::pair{true, true}, std::pair{false, true}}) {
    std::vector<float> fast;
    run({.threads = 2, .avx512 = avx512}, &fast, pack);
    // Relative RMS error against F32: about 1% for Q8_0, about 12% for Q4_0 on normal weights.
    double err = 0, norm = 0, diff_paths = 0;
    for (int64_t i = 0; i < n * m; ++i) {
      err += (fast[i] - exact[i]) * (fast[i] - exact[i]);
      norm += exact[i] * exact[i];
      diff_paths = std::max<double>(diff_paths, std::fabs(fast[i] - ref[i]));
    }
    const double rel = std::sqrt(err / norm);
    EXPECT_LT(rel, dt == DType::kQ8_0 ? 0.02 : 0.15) << DTypeName(dt) << " avx512 " << avx512;
    EXPECT_GT(rel, dt == DType::kQ8_0 ? 1e-4 : 0.02);  // the weights really were quantized
    // Fast and reference paths agree far more closely than either agrees with F32, except
    // where prefill batches widen the weights instead of quantizing the activations (the AVX2
    // path at n >= 12).
    const bool widened = n >= 12 && !(avx512 && cpu::CpuHasAvx512Vnni());
    EXPECT_LT(diff_paths, widened ? 0.5 : 1e-3)
        << DTypeName(dt) << " avx512 " << avx512 << " packed " << pack;
  }
  // Weights read from the file mapping in place (--mmap-weights) are not packed: no second
  // copy (run() checks that PackForMatMul gives nothing).
  std::vector<float> mapped;
  run({.threads = 2, .copy_weights = false}, &mapped, true);
}

INSTANTIATE_TEST_SUITE_P(Types, QuantMatMulTest,
                         ::testing::Combine(::testing::Values(DType::kQ8_0, DType::kQ4_0),
                                            ::testing::Values(int64_t{1}, int64_t{3},
                                                              int64_t{20})));

}  // namespace
}  // namespace shardserve
