// Fused CPU kernels for CGNet's folded inference network (channels-last float32).
//
// The convolutions of the folded network already run near the cores' FMA peak; the rest of a
// forward is memory traffic: two depthwise convolutions, a concatenation, an activation and a
// global mean per CG block, a concatenation + affine + activation per join. Each kernel here does
// one such chain in one pass over the data. Built by cgnet.inference.cpu_kernels with the
// machine's C++ compiler (-O3 -march=native -fopenmp) and called through ctypes with raw pointers:
// no Python or torch headers, so the build takes about a second.
//
// Vectors are GCC/Clang vector extensions (8 floats), lowered to AVX/AVX2, SSE pairs or NEON.

#include <cstdint>
#include <cstring>

namespace {

typedef float v8 __attribute__((vector_size(32)));

enum Activation { kNone = 0, kReLU = 1, kPReLU = 2 };

inline v8 load(const float *p) {
    v8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline void store(float *p, v8 v) { std::memcpy(p, &v, sizeof v); }

inline v8 activate(v8 v, v8 slope, int act) {
    if (act == kPReLU) return v > 0.f ? v : v * slope;
    if (act == kReLU) return v > 0.f ? v : v8{};
    return v;
}

inline float activate(float v, float slope, int act) {
    if (act == kPReLU) return v > 0.f ? v : v * slope;
    if (act == kReLU) return v > 0.f ? v : 0.f;
    return v;
}

// One 3x3 depthwise convolution (dilation d, padding d) of output row h, written with bias and
// activation into out[j * out_stride + c] and summed per channel into sums (when not null).
// x is one image [H, W, C]; taps is [9][C] (tap-major, so 8 channels of a tap are one load).
void depthwise_row(const float *x, float *out, float *sums, const float *taps, const float *bias,
                   const float *slope, int act, int64_t H, int64_t W, int64_t C,
                   int64_t out_stride, int64_t h, int64_t d) {
    const float *rows[3];
    for (int k = 0; k < 3; ++k) {
        const int64_t hh = h + (k - 1) * d;
        rows[k] = (hh >= 0 && hh < H) ? x + hh * W * C : nullptr;
    }
    // Columns whose three taps all fall inside the image: no bounds checks there.
    const int64_t lo = d < W ? d : W;
    const int64_t hi = W - d > lo ? W - d : lo;
    int64_t c0 = 0;
    for (; c0 + 8 <= C; c0 += 8) {
        v8 w[9];
        for (int t = 0; t < 9; ++t) w[t] = load(taps + t * C + c0);
        const v8 b = load(bias + c0);
        const v8 a = act == kPReLU ? load(slope + c0) : v8{};
        v8 s{};
        for (int64_t j = 0; j < W; ++j) {
            v8 acc = b;
            if (j >= lo && j < hi) {
                for (int k = 0; k < 3; ++k) {
                    if (!rows[k]) continue;
                    const float *p = rows[k] + j * C + c0;
                    acc += load(p - d * C) * w[3 * k];
                    acc += load(p) * w[3 * k + 1];
                    acc += load(p + d * C) * w[3 * k + 2];
                }
            } else {
                for (int k = 0; k < 3; ++k) {
                    if (!rows[k]) continue;
                    for (int q = 0; q < 3; ++q) {
                        const int64_t jj = j + (q - 1) * d;
                        if (jj >= 0 && jj < W) acc += load(rows[k] + jj * C + c0) * w[3 * k + q];
                    }
                }
            }
            acc = activate(acc, a, act);
            store(out + j * out_stride + c0, acc);
            s += acc;
        }
        if (sums) store(sums + c0, s);
    }
    for (; c0 < C; ++c0) {  // channels past the last multiple of 8
        const float a = act == kPReLU ? slope[c0] : 0.f;
        float s = 0.f;
        for (int64_t j = 0; j < W; ++j) {
            float acc = bias[c0];
            for (int k = 0; k < 3; ++k) {
                if (!rows[k]) continue;
                for (int q = 0; q < 3; ++q) {
                    const int64_t jj = j + (q - 1) * d;
                    if (jj >= 0 && jj < W) acc += rows[k][jj * C + c0] * taps[(3 * k + q) * C + c0];
                }
            }
            acc = activate(acc, a, act);
            out[j * out_stride + c0] = acc;
            s += acc;
        }
        if (sums) sums[c0] = s;
    }
}

}  // namespace

extern "C" {

// A CG block's joint feature in one pass: f_loc (3x3 depthwise) and f_sur (3x3 depthwise, dilation
// d) of x [N, H, W, C], each with its folded f_joi bias, activated and written side by side into
// out [N, H, W, 2C]; row_sums [N * H, 2C] (or null) gets each row's per-channel sums for f_glo.
// One thread owns whole rows, so the sums do not depend on the thread count.
void cgnet_cg_joint(const float *x, float *out, float *row_sums, const float *loc_taps,
                    const float *loc_bias, const float *sur_taps, const float *sur_bias,
                    const float *slope, int act, int64_t N, int64_t H, int64_t W, int64_t C,
                    int64_t d, int threads) {
    const int64_t R = N * H;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < R; ++r) {
        const float *image = x + (r / H) * H * W * C;
        const int64_t h = r % H;
        float *o = out + r * W * 2 * C;
        float *s = row_sums ? row_sums + r * 2 * C : nullptr;
        depthwise_row(image, o, s, loc_taps, loc_bias, slope, act, H, W, C, 2 * C, h, 1);
        depthwise_row(image, o + C, s ? s + C : nullptr, sur_taps, sur_bias,
                      act == kPReLU ? slope + C : nullptr, act, H, W, C, 2 * C, h, d);
    }
}

// A join in one pass: out[p, offset_k + c] = act(part_k[p, c] * scale + shift) for every part k
// (channels-last [P, C_k] each) and every pixel p of P.
void cgnet_join(const float *const *parts, const int64_t *channels, int64_t num_parts, float *out,
                const float *scale, const float *shift, const float *slope, int act, int64_t P,
                int64_t out_channels, int threads) {
    const int64_t block = 256;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p0 = 0; p0 < P; p0 += block) {
        const int64_t p1 = p0 + block < P ? p0 + block : P;
        int64_t offset = 0;
        for (int64_t k = 0; k < num_parts; ++k) {
            const int64_t C = channels[k];
            const float *sc = scale + offset, *sh = shift + offset;
            const float *sl = act == kPReLU ? slope + offset : nullptr;
            for (int64_t p = p0; p < p1; ++p) {
                const float *src = parts[k] + p * C;
                float *dst = out + p * out_channels + offset;
                for (int64_t c = 0; c < C; ++c) {
                    dst[c] = activate(src[c] * sc[c] + sh[c], sl ? sl[c] : 0.f, act);
                }
            }
            offset += C;
        }
    }
}

// PReLU (or ReLU) in place over channels-last x [P, C]: a convolution's activation without a
// second buffer.
void cgnet_activate_inplace(float *x, const float *slope, int act, int64_t P, int64_t C,
                            int threads) {
    const int64_t block = 1024;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p0 = 0; p0 < P; p0 += block) {
        const int64_t p1 = p0 + block < P ? p0 + block : P;
        for (int64_t p = p0; p < p1; ++p) {
            float *row = x + p * C;
            for (int64_t c = 0; c < C; ++c) row[c] = activate(row[c], act == kPReLU ? slope[c] : 0.f, act);
        }
    }
}

// Bilinear resize (align_corners=False, as torch computes its source coordinates) of x [M, h, w]
// to out [M, H, W], both contiguous, in two separable passes: along W into rows [M, h, W]
// (caller's scratch), then along H, which is a contiguous blend of two rows per output row.
void cgnet_resize_bilinear(const float *x, float *rows, float *out, int64_t M, int64_t h,
                           int64_t w, int64_t H, int64_t W, const int64_t *x0, const int64_t *x1,
                           const float *wx0, const float *wx1, const int64_t *y0,
                           const int64_t *y1, const float *wy0, const float *wy1, int threads) {
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M * h; ++r) {
            const float *src = x + r * w;
            float *dst = rows + r * W;
            for (int64_t j = 0; j < W; ++j) dst[j] = wx0[j] * src[x0[j]] + wx1[j] * src[x1[j]];
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M * H; ++r) {
            const int64_t m = r / H, i = r % H;
            const float *a = rows + (m * h + y0[i]) * W, *b = rows + (m * h + y1[i]) * W;
            const float wa = wy0[i], wb = wy1[i];
            float *dst = out + r * W;
            for (int64_t j = 0; j < W; ++j) dst[j] = wa * a[j] + wb * b[j];
        }
    }
}

}  // extern "C"
