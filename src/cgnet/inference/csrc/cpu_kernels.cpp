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

// PReLU's backward, for training on the CPU: grad_x = g where x > 0, else g * slope[c], and the
// slope's gradient, the sum of g * x where x <= 0, as partial sums that the caller adds up in a fixed
// order (so the result does not depend on the thread count). torch computes the same in several
// passes with a full-size temporary. NCHW: x, g and grad_x are N * C planes of HW values, and
// partial gets one sum per plane.
void cgnet_prelu_backward_planes(const float *x, const float *g, const float *slope, float *grad_x,
                                 float *partial, int64_t N, int64_t C, int64_t HW, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t plane = 0; plane < N * C; ++plane) {
        const float a = slope[plane % C];
        const v8 av = v8{} + a;
        const float *xp = x + plane * HW, *gp = g + plane * HW;
        float *op = grad_x + plane * HW;
        v8 acc{};
        int64_t i = 0;
        for (; i + 8 <= HW; i += 8) {
            const v8 xv = load(xp + i), gv = load(gp + i);
            const auto positive = xv > 0.f;
            store(op + i, positive ? gv : gv * av);
            acc += positive ? v8{} : gv * xv;
        }
        float sum = 0.f;
        for (int k = 0; k < 8; ++k) sum += acc[k];
        for (; i < HW; ++i) {
            const float xv = xp[i], gv = gp[i];
            op[i] = xv > 0.f ? gv : gv * a;
            sum += xv > 0.f ? 0.f : gv * xv;
        }
        partial[plane] = sum;
    }
}

// The same for channels-last x, g and grad_x [P, C]: blocks of 256 pixels, partial [blocks, C].
void cgnet_prelu_backward_rows(const float *x, const float *g, const float *slope, float *grad_x,
                               float *partial, int64_t P, int64_t C, int threads) {
    const int64_t block = 256, blocks = (P + block - 1) / block;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        float *acc = partial + b * C;
        for (int64_t c = 0; c < C; ++c) acc[c] = 0.f;
        const int64_t p1 = (b + 1) * block < P ? (b + 1) * block : P;
        for (int64_t p = b * block; p < p1; ++p) {
            const float *xr = x + p * C, *gr = g + p * C;
            float *orow = grad_x + p * C;
            for (int64_t c = 0; c < C; ++c) {
                const float xv = xr[c], gv = gr[c];
                const bool positive = xv > 0.f;
                orow[c] = positive ? gv : gv * slope[c];
                acc[c] += positive ? 0.f : gv * xv;
            }
        }
    }
}

// Bilinear resize (align_corners=False, as torch computes its source coordinates) of channels-last
// x [N, h, w, C] to out [N, H, W, C], in two separable passes: along W into rows [N, h, W, C]
// (caller's scratch), then along H, a contiguous blend of two such rows per output row. The output
// stays channels-last, where the class argmax that follows is a fast inner reduction.
void cgnet_resize_bilinear(const float *x, float *rows, float *out, int64_t N, int64_t h,
                           int64_t w, int64_t H, int64_t W, int64_t C, const int64_t *x0,
                           const int64_t *x1, const float *wx0, const float *wx1,
                           const int64_t *y0, const int64_t *y1, const float *wy0,
                           const float *wy1, int threads) {
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < N * h; ++r) {
            const float *src = x + r * w * C;
            float *dst = rows + r * W * C;
            for (int64_t j = 0; j < W; ++j) {
                const float *a = src + x0[j] * C, *b = src + x1[j] * C;
                const float wa = wx0[j], wb = wx1[j];
                for (int64_t c = 0; c < C; ++c) dst[j * C + c] = wa * a[c] + wb * b[c];
            }
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < N * H; ++r) {
            const int64_t n = r / H, i = r % H;
            const float *a = rows + (n * h + y0[i]) * W * C;
            const float *b = rows + (n * h + y1[i]) * W * C;
            const float wa = wy0[i], wb = wy1[i];
            float *dst = out + r * W * C;
            for (int64_t j = 0; j < W * C; ++j) dst[j] = wa * a[j] + wb * b[j];
        }
    }
}

// The class map of pixels [p0, p1) of channels-last logits x [P, C], one pixel at a time.
inline void argmax_pixels(const float *x, uint8_t *out, int64_t p0, int64_t p1, int64_t C) {
    for (int64_t p = p0; p < p1; ++p) {
        const float *v = x + p * C;
        float best = v[0];
        int index = 0;
        for (int64_t c = 1; c < C && best == best; ++c) {
            if (v[c] > best || v[c] != v[c]) {
                best = v[c];
                index = static_cast<int>(c);
            }
        }
        out[p] = static_cast<uint8_t>(index);
    }
}

// The class map of channels-last logits x [P, C]: for each pixel the index of the largest of its C
// scores (the first one on ties, a NaN counting as the largest, as torch.argmax), as uint8. Eight
// pixels go through each class together as one vector (a strided load each), so the compare-select
// chains of eight pixels overlap.
void cgnet_class_argmax(const float *x, uint8_t *out, int64_t P, int64_t C, int threads) {
    typedef int32_t i8v __attribute__((vector_size(32)));
    const int64_t block = 4096;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p0 = 0; p0 < P; p0 += block) {
        const int64_t p1 = p0 + block < P ? p0 + block : P;
        int64_t p = p0;
        for (; p + 8 <= p1; p += 8) {
            const float *base = x + p * C;
            v8 best = {base[0],     base[C],     base[2 * C], base[3 * C],
                       base[4 * C], base[5 * C], base[6 * C], base[7 * C]};
            i8v index = {};
            i8v nan = best != best;
            for (int64_t c = 1; c < C; ++c) {
                const float *col = base + c;
                const v8 value = {col[0],     col[C],     col[2 * C], col[3 * C],
                                  col[4 * C], col[5 * C], col[6 * C], col[7 * C]};
                const i8v take = ~nan & ((value > best) | (value != value));
                best = take ? value : best;
                index = take ? i8v{} + static_cast<int32_t>(c) : index;
                nan |= value != value;
            }
            for (int k = 0; k < 8; ++k) out[p + k] = static_cast<uint8_t>(index[k]);
        }
        argmax_pixels(x, out, p, p1, C);
    }
}

}  // extern "C"
