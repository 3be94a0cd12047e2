// DCConv's native CPU kernels: models/dcconv_cpu.py compiles this file on first use and calls it through ctypes.
// Plain C++ and OpenMP, no torch headers, so it compiles in under a second. Each function is one step of the
// reference formulation (models/dcconv_reference.py) in one parallel region.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// An int32 that orders like the float32: -0.0 as +0.0, every NaN above +inf (as a stable sort places them).
inline int32_t order_key(float v) {
    v = v + 0.0f;
    int32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits ^= (bits >> 31) & 0x7FFFFFFF;  // negative floats: the larger the magnitude, the smaller the key
    return v != v ? 0x7FFFFFFF : bits;
}

inline int64_t min_of(const int64_t* values, int64_t count) {
    int64_t smallest = INT64_MAX;
    for (int64_t i = 0; i < count; ++i) smallest = values[i] < smallest ? values[i] : smallest;
    return smallest;
}

inline float as_float(float v) { return v; }

inline float as_float(uint16_t bf16) {  // bfloat16 bits: the high half of a float32
    const uint32_t bits = static_cast<uint32_t>(bf16) << 16;
    float v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

template <typename T>
T from_float(float v);

template <>
inline float from_float<float>(float v) { return v; }

template <>
inline uint16_t from_float<uint16_t>(float v) {  // round to nearest even, NaN kept quiet: as torch's bfloat16
    if (v != v) return 0x7FC0;
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits += 0x7FFF + ((bits >> 16) & 1);
    return static_cast<uint16_t>(bits >> 16);
}

// Sixteen float32 lanes as a GCC/Clang vector: one AVX-512 register, or two or four narrower ones.
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));

inline f32x16 load16(const float* p) {
    f32x16 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline f32x16 load16(const uint16_t* p) {  // bfloat16 -> float32: the bits into the high half
    u16x16 half;
    std::memcpy(&half, p, sizeof half);
    const u32x16 bits = __builtin_convertvector(half, u32x16) << 16;
    f32x16 v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

inline void store16(float* p, f32x16 v) { std::memcpy(p, &v, sizeof v); }

inline void store16(uint16_t* p, f32x16 v) {  // as from_float<uint16_t>, lane by lane
    u32x16 bits;
    std::memcpy(&bits, &v, sizeof bits);
    const u32x16 nan = reinterpret_cast<u32x16>(v != v);
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 & ~nan) | (0x7FC0 & nan);
    const u16x16 half = __builtin_convertvector(bits, u16x16);
    std::memcpy(p, &half, sizeof half);
}

// The cluster convolution of tokens t0 .. t0 + R - 1 of one image over the 32 channels [e0, e0 + 32):
// out[t] = sum_k tokens[idx[t, k]] * weight[k] (+ bias), summed over k in order in float32, as the reference does.
// R tokens at once make 2R independent chains of additions (one chain waits out each addition's latency) and
// share each weight load.
template <int R, typename T>
inline void cluster_conv_rows(const T* image, const int64_t* idx, const float* weight, const float* bias,
                              int64_t channels, int64_t k, int64_t e0, int64_t t0, T* out) {
    f32x16 low[R], high[R];
    for (int i = 0; i < R; ++i) {
        const T* x = image + idx[(t0 + i) * k] * channels + e0;
        low[i] = load16(x) * load16(weight + e0);
        high[i] = load16(x + 16) * load16(weight + e0 + 16);
    }
    for (int64_t j = 1; j < k; ++j) {
        const f32x16 w_low = load16(weight + j * channels + e0), w_high = load16(weight + j * channels + e0 + 16);
        for (int i = 0; i < R; ++i) {
            const T* x = image + idx[(t0 + i) * k + j] * channels + e0;
            low[i] += load16(x) * w_low;
            high[i] += load16(x + 16) * w_high;
        }
    }
    for (int i = 0; i < R; ++i) {
        if (bias != nullptr) {
            low[i] += load16(bias + e0);
            high[i] += load16(bias + e0 + 16);
        }
        store16(out + (t0 + i) * channels + e0, low[i]);
        store16(out + (t0 + i) * channels + e0 + 16, high[i]);
    }
}

// Every token of one image over the 32 channels [e0, e0 + 32). Those channels of every token (25 KB at 14 x 14
// tokens) stay in the L1 cache while the gathers read them; taking whole token rows instead (2.5 KB each in
// stage 3) read every gather from L2.
template <typename T>
inline void cluster_conv_block(const T* image, const int64_t* idx, const float* weight, const float* bias, int64_t n,
                               int64_t channels, int64_t k, int64_t e0, T* out) {
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) cluster_conv_rows<4>(image, idx, weight, bias, channels, k, e0, t, out);
    for (; t < n; ++t) cluster_conv_rows<1>(image, idx, weight, bias, channels, k, e0, t, out);
}

// The same for the last channels [e0, channels) when they are fewer than 32, one at a time.
template <typename T>
inline void cluster_conv_tail(const T* image, const int64_t* idx, const float* weight, const float* bias, int64_t n,
                              int64_t channels, int64_t k, int64_t e0, T* out) {
    for (int64_t t = 0; t < n; ++t)
        for (int64_t e = e0; e < channels; ++e) {
            float acc = as_float(image[idx[t * k] * channels + e]) * weight[e];
            for (int64_t j = 1; j < k; ++j)
                acc += as_float(image[idx[t * k + j] * channels + e]) * weight[j * channels + e];
            if (bias != nullptr) acc += bias[e];
            out[t * channels + e] = from_float<T>(acc);
        }
}

// The cluster convolution of tokens (batch, n, channels) by idx (batch, n, k) into out, for tokens and out in float32
// or bfloat16 (T), weight (k, channels) and bias float32. Returns the number of rows with an index outside [0, n);
// then nothing is written (the caller raises).
template <typename T>
int64_t cluster_conv(const T* tokens, const int64_t* idx, const float* weight, const float* bias, int64_t batch,
                     int64_t n, int64_t channels, int64_t k, T* out, int threads) {
    constexpr int64_t block = 32;
    const int64_t rows_total = batch * n;
    int64_t bad_rows = 0;
    for (int64_t r = 0; r < rows_total; ++r) {
        bool valid = true;
        for (int64_t j = 0; j < k; ++j) valid = valid && idx[r * k + j] >= 0 && idx[r * k + j] < n;
        bad_rows += !valid;
    }
    if (bad_rows) return bad_rows;
    const int64_t blocks = (channels + block - 1) / block;  // the last may be a tail of fewer channels
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) \
    if (threads > 1 && rows_total * k * channels >= 65536)
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t c = 0; c < blocks; ++c) {
            const T* image = tokens + b * n * channels;
            const int64_t* image_idx = idx + b * n * k;
            T* image_out = out + b * n * channels;
            if ((c + 1) * block <= channels)
                cluster_conv_block(image, image_idx, weight, bias, n, channels, k, c * block, image_out);
            else
                cluster_conv_tail(image, image_idx, weight, bias, n, channels, k, c * block, image_out);
        }
    return 0;
}

// The sub-vector (channels 0, d, 2d, ...) of each token row in [first, last) copied into the first s of its
// query row: the one pass over the input (with d = 8 every cache line of it holds two of them).
inline void copy_subvectors(const float* tokens, int64_t channels, int64_t d, int64_t s, int64_t first, int64_t last,
                            float* queries) {
    for (int64_t r = first; r < last; ++r) {
        const float* row = tokens + r * channels;
        float* q = queries + r * (s + 2);
        for (int64_t j = 0; j < s; ++j) q[j] = row[j * d];
    }
}

// One image's centre of one channel, from its n values `stride` apart: the mean rounded to a power-of-two grid at
// or below the spread, both summed over the tokens in order in double (so the same whatever the threads).
inline float centre_of(const float* column, int64_t n, int64_t stride) {
    double mean = 0.0, var = 0.0;
    for (int64_t t = 0; t < n; ++t) mean += column[t * stride];
    mean /= static_cast<double>(n);
    for (int64_t t = 0; t < n; ++t) {
        const double dev = column[t * stride] - mean;
        var += dev * dev;
    }
    double spread = std::sqrt(var / static_cast<double>(n));
    spread = spread < 0x1p-100 ? 0x1p-100 : spread;  // NaN stays NaN, as torch's clamp_min
    const double step = std::exp2(std::floor(std::log2(spread)));
    const double centre = std::nearbyint(mean / step) * step;  // half to even, as torch.round
    return std::isfinite(centre) ? static_cast<float>(centre) : 0.0f;
}

// Rows [first, last) of queries centred by their image's `shift` (n rows an image), then augmented; keys written.
inline void centre_rows(const float* shift, int64_t n, int64_t s, int64_t first, int64_t last, float* queries,
                        float* keys) {
    const int64_t width = s + 2;
    for (int64_t r = first; r < last; ++r) {
        const float* centre = shift + (r / n) * s;
        float* q = queries + r * width;
        float* k = keys + r * width;
        float sq = 0.0f;
        for (int64_t j = 0; j < s; ++j) {
            const float c = q[j] - centre[j];
            q[j] = c;
            k[j] = c * -2.0f;
            sq += c * c;
        }
        q[s] = sq;
        q[s + 1] = 1.0f;
        k[s] = 1.0f;
        k[s + 1] = sq;
    }
}

}  // namespace

extern "C" {

// Centred float32 sub-vectors (channels 0, d, 2d, ... of tokens (batch, n, channels)) as augmented rows:
// queries (batch, n, s + 2) = [c, |c|^2, 1], keys (batch, n, s + 2) = [-2c, 1, |c|^2], c the sub-vector less its
// image's `centre_of` per channel. With at least an image a thread: one loop over the images, so one barrier a
// call (each barrier waits for every thread, which a busy machine may have descheduled). With fewer (batch 1):
// three loops each split over every thread (copy, centres, rows), so each thread reads the tokens the previous
// op most likely wrote from its core.
void dcc_subvector_rows(const float* tokens, int64_t batch, int64_t n, int64_t channels, int64_t d, int64_t s,
                        float* queries, float* keys, int threads) {
    const int64_t width = s + 2;
    std::vector<float> shift(batch * s);
    if (batch >= threads || threads < 2 || batch * n * s < 4096) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && batch > 1)
        for (int64_t b = 0; b < batch; ++b) {
            copy_subvectors(tokens, channels, d, s, b * n, (b + 1) * n, queries);
            for (int64_t j = 0; j < s; ++j) shift[b * s + j] = centre_of(queries + b * n * width + j, n, width);
            centre_rows(shift.data(), n, s, b * n, (b + 1) * n, queries, keys);
        }
        return;
    }
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < batch * n; ++r) copy_subvectors(tokens, channels, d, s, r, r + 1, queries);
#pragma omp for schedule(static)
        for (int64_t c = 0; c < batch * s; ++c) shift[c] = centre_of(queries + (c / s) * n * width + c % s, n, width);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < batch * n; ++r) centre_rows(shift.data(), n, s, r, r + 1, queries, keys);
    }
}

// The k nearest columns of each row of dist (rows_total = images x rows, n columns), ascending, ties to the
// lower column; the row's own token (row % rows + start) first as if its distance were -inf. Out: int64.
// Each column becomes one unique int64 key, (order key << 32) + column; the keys sit in blocks of 16 with each
// block's minimum kept aside, so taking the next nearest is one minimum over the block minima and one over the
// block it came from: branch-free loops the compiler vectorises (a sorted insertion list spent most of its
// time in mispredicted branches, and ATen's topk on the same keys took several times longer).
void dcc_nearest(const float* dist, int64_t rows_total, int64_t rows, int64_t n, int64_t start, int64_t k,
                 int64_t* out, int threads) {
    constexpr int64_t lanes = 16;
    constexpr int64_t taken = INT64_MAX;
    const int64_t blocks = (n + lanes - 1) / lanes;
    const int64_t centre_key = static_cast<int64_t>(order_key(-INFINITY)) * (int64_t{1} << 32);
#pragma omp parallel num_threads(threads) if (threads > 1 && rows_total * n >= 32768)
    {
        std::vector<int64_t> keys(blocks * lanes, taken), minima(blocks);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows_total; ++r) {
            const float* row = dist + r * n;
            for (int64_t j = 0; j < n; ++j) keys[j] = static_cast<int64_t>(order_key(row[j])) * (int64_t{1} << 32) + j;
            const int64_t centre = r % rows + start;
            keys[centre] = centre_key + centre;
            for (int64_t b = 0; b < blocks; ++b) minima[b] = min_of(keys.data() + b * lanes, lanes);
            for (int64_t slot = 0; slot < k; ++slot) {
                const int64_t column = min_of(minima.data(), blocks) & 0xFFFFFFFF;
                out[r * k + slot] = column;
                keys[column] = taken;
                const int64_t b = column / lanes;
                minima[b] = min_of(keys.data() + b * lanes, lanes);
            }
        }
    }
}

int64_t dcc_cluster_conv_f32(const float* tokens, const int64_t* idx, const float* weight, const float* bias,
                             int64_t batch, int64_t n, int64_t channels, int64_t k, float* out, int threads) {
    return cluster_conv(tokens, idx, weight, bias, batch, n, channels, k, out, threads);
}

int64_t dcc_cluster_conv_bf16(const uint16_t* tokens, const int64_t* idx, const float* weight, const float* bias,
                              int64_t batch, int64_t n, int64_t channels, int64_t k, uint16_t* out, int threads) {
    return cluster_conv(tokens, idx, weight, bias, batch, n, channels, k, out, threads);
}

}  // extern "C"
