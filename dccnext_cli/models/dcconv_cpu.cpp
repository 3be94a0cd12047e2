// DCConv's native CPU kernels: models/dcconv_cpu.py compiles this file on first use and calls it through ctypes.
// Plain C++ and OpenMP, no torch headers, so it compiles in under a second. Each function is one step of the
// reference formulation (models/dcconv_reference.py) in one parallel loop.
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

// out[r] = sum_k tokens[image(r) * n + idx[r, k]] * weight[k] (+ bias) for the rows r of (batch x n), summed
// over k in order in float32, as the reference does. Tokens and out are float32 or bfloat16 (T); weight and
// bias float32. Returns the number of rows with an index outside [0, n) (their outputs are left unwritten).
template <typename T>
int64_t cluster_conv(const T* tokens, const int64_t* idx, const float* weight, const float* bias, int64_t batch,
                     int64_t n, int64_t channels, int64_t k, T* out, int threads) {
    const int64_t rows_total = batch * n;
    int64_t bad_rows = 0;
#pragma omp parallel num_threads(threads) if (threads > 1 && rows_total * k * channels >= 65536) \
    reduction(+ : bad_rows)
    {
        std::vector<float> acc(channels);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows_total; ++r) {
            const T* image = tokens + (r / n) * n * channels;
            const int64_t* cluster = idx + r * k;
            bool valid = true;
            for (int64_t j = 0; j < k; ++j) valid = valid && cluster[j] >= 0 && cluster[j] < n;
            if (!valid) {
                ++bad_rows;
                continue;
            }
            const T* first = image + cluster[0] * channels;
            for (int64_t e = 0; e < channels; ++e) acc[e] = as_float(first[e]) * weight[e];
            for (int64_t j = 1; j < k; ++j) {
                const T* x = image + cluster[j] * channels;
                const float* w = weight + j * channels;
                for (int64_t e = 0; e < channels; ++e) acc[e] += as_float(x[e]) * w[e];
            }
            if (bias != nullptr)
                for (int64_t e = 0; e < channels; ++e) acc[e] += bias[e];
            T* y = out + r * channels;
            for (int64_t e = 0; e < channels; ++e) y[e] = from_float<T>(acc[e]);
        }
    }
    return bad_rows;
}

}  // namespace

extern "C" {

// Centred float32 sub-vectors (channels 0, d, 2d, ... of tokens (batch, n, channels)) as augmented rows:
// queries (batch, n, s + 2) = [c, |c|^2, 1], keys (batch, n, s + 2) = [-2c, 1, |c|^2]. The centre of each image
// and channel is its mean over the tokens rounded to a power-of-two grid at or below the spread (in double).
// The sub-vectors are first copied into queries (one pass over the tokens: with d = 8 every cache line of the
// input holds two of them, so each strided pass reads all of it), then centred there.
// One parallel loop over images: one barrier a call (each barrier waits for every thread, which a busy machine
// may have descheduled).
void dcc_subvector_rows(const float* tokens, int64_t batch, int64_t n, int64_t channels, int64_t d, int64_t s,
                        float* queries, float* keys, int threads) {
    const int64_t width = s + 2;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && batch > 1)
    for (int64_t b = 0; b < batch; ++b) {
        const float* image = tokens + b * n * channels;
        float* rows = queries + b * n * width;
        std::vector<double> mean(s, 0.0), var(s, 0.0);
        std::vector<float> shift(s);
        for (int64_t t = 0; t < n; ++t) {
            const float* row = image + t * channels;
            float* q = rows + t * width;
            for (int64_t j = 0; j < s; ++j) q[j] = row[j * d];
            for (int64_t j = 0; j < s; ++j) mean[j] += q[j];
        }
        for (int64_t j = 0; j < s; ++j) mean[j] /= static_cast<double>(n);
        for (int64_t t = 0; t < n; ++t)
            for (int64_t j = 0; j < s; ++j) {
                const double dev = rows[t * width + j] - mean[j];
                var[j] += dev * dev;
            }
        for (int64_t j = 0; j < s; ++j) {
            double spread = std::sqrt(var[j] / static_cast<double>(n));
            spread = spread < 0x1p-100 ? 0x1p-100 : spread;  // NaN stays NaN, as torch's clamp_min
            const double step = std::exp2(std::floor(std::log2(spread)));
            const double centre = std::nearbyint(mean[j] / step) * step;  // half to even, as torch.round
            shift[j] = std::isfinite(centre) ? static_cast<float>(centre) : 0.0f;
        }
        for (int64_t t = 0; t < n; ++t) {
            float* q = rows + t * width;
            float* k = keys + (b * n + t) * width;
            float sq = 0.0f;
            for (int64_t j = 0; j < s; ++j) {
                const float c = q[j] - shift[j];
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
