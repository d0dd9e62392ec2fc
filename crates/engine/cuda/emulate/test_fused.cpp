// cuda/fused.cu's kernels run on the CPU (cuda_on_cpu.h) against plain reference code, with the
// launch shapes src/model/fused/cuda.rs uses. Built and run by the engine's integration tests
// (tests/integration/cuda_kernels.rs). Exit status 0 when every check holds; failures are printed.
#include "../fused.cu"

#include <cstdio>
#include <random>
#include <string>

static int failures = 0;
static std::mt19937 rng(7);

static float to_f(float x) { return x; }
static float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> static T from_f(float x);
template <> float from_f<float>(float x) { return x; }
template <> __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

template <typename T> static const char* type_name();
template <> const char* type_name<float>() { return "f32"; }
template <> const char* type_name<__nv_bfloat16>() { return "bf16"; }

// Relative tolerance of one stored value: f32 results differ from the reference by summation order
// only; bf16 results are rounded to 8 significant bits once.
template <typename T> static double tolerance() { return sizeof(T) == 4 ? 2e-5 : 1e-2; }

template <typename T>
static std::vector<T> random_values(size_t n, float scale = 1.f) {
    std::uniform_real_distribution<float> dist(-scale, scale);
    std::vector<T> v(n);
    for (auto& x : v) x = from_f<T>(dist(rng));
    return v;
}

template <typename T>
static void expect_close(const std::string& what, const T* got, const std::vector<double>& want, double tol) {
    for (size_t i = 0; i < want.size(); ++i) {
        const double g = to_f(got[i]), w = want[i];
        if (!(std::fabs(g - w) <= tol * (std::fabs(w) + 1e-2))) {
            std::printf("FAIL %s: element %zu is %.7g, expected %.7g\n", what.c_str(), i, g, w);
            ++failures;
            return;
        }
    }
}

static unsigned warps_for(size_t threads) { return unsigned((threads + 31) / 32 * 32); }

template <typename T, typename Kernel>
static void check_add_rms_norm(Kernel kernel, int rows, int n) {
    const float eps = 1e-6f;
    auto x = random_values<T>(size_t(rows) * n), h = random_values<T>(size_t(rows) * n),
         w = random_values<T>(n, 2.f);
    std::vector<T> out(2 * size_t(rows) * n);
    launch({unsigned(rows)}, {std::min(1024u, warps_for(n))}, kernel, x.data(), h.data(), w.data(), out.data(),
           rows, n, eps);
    std::vector<double> sums(size_t(rows) * n), normed(size_t(rows) * n);
    for (int r = 0; r < rows; ++r) {
        double squares = 0;
        for (int i = 0; i < n; ++i) {
            const size_t at = size_t(r) * n + i;
            sums[at] = to_f(from_f<T>(to_f(x[at]) + to_f(h[at])));
            squares += sums[at] * sums[at];
        }
        const double scale = 1 / std::sqrt(squares / n + eps);
        for (int i = 0; i < n; ++i) normed[size_t(r) * n + i] = sums[size_t(r) * n + i] * scale * to_f(w[i]);
    }
    const std::string tag = std::string("add_rms_norm ") + type_name<T>() + " n=" + std::to_string(n);
    expect_close(tag + " sum", out.data(), sums, 0);
    expect_close(tag + " normed", out.data() + size_t(rows) * n, normed, tolerance<T>());
}

template <typename T, typename Kernel>
static void check_rope_qkv(Kernel kernel, int d, bool bias) {
    const int heads = 4, kv = 2, n = 3, start = 5, capacity = 12, half = d / 2, max_pos = 16;
    auto q = random_values<T>(size_t(n) * heads * d), k = random_values<T>(size_t(n) * kv * d),
         v = random_values<T>(size_t(n) * kv * d);
    auto bq = random_values<T>(size_t(heads) * d), bk = random_values<T>(size_t(kv) * d),
         bv = random_values<T>(size_t(kv) * d);
    std::vector<T> cos(size_t(max_pos) * half), sin(size_t(max_pos) * half);
    for (int p = 0; p < max_pos; ++p)
        for (int i = 0; i < half; ++i) {
            const double angle = p * std::pow(10000.0, -2.0 * i / d);
            cos[size_t(p) * half + i] = from_f<T>(float(std::cos(angle)));
            sin[size_t(p) * half + i] = from_f<T>(float(std::sin(angle)));
        }
    const T sentinel = from_f<T>(123.f);
    std::vector<T> q_out(size_t(heads) * n * d), k_cache(size_t(kv) * capacity * d, sentinel),
        v_cache(size_t(kv) * capacity * d, sentinel);
    launch({unsigned(heads + 2 * kv), unsigned(n)}, {warps_for(half)}, kernel, q.data(), k.data(), v.data(),
           bias ? bq.data() : q.data(), bias ? bk.data() : k.data(), bias ? bv.data() : v.data(), int(bias),
           cos.data(), sin.data(), q_out.data(), k_cache.data(), v_cache.data(), heads, kv, d, n, start, capacity);
    // src (row r of `width` heads), head index -> the expected d values.
    auto expected = [&](const std::vector<T>& src, const std::vector<T>& b, int width, int head, int r, bool rotate) {
        std::vector<double> out(d);
        for (int i = 0; i < half; ++i) {
            double a = to_f(src[(size_t(r) * width + head) * d + i]);
            double c = to_f(src[(size_t(r) * width + head) * d + i + half]);
            if (bias) {
                a = to_f(from_f<T>(float(a) + to_f(b[size_t(head) * d + i])));
                c = to_f(from_f<T>(float(c) + to_f(b[size_t(head) * d + i + half])));
            }
            const double cs = to_f(cos[size_t(start + r) * half + i]), sn = to_f(sin[size_t(start + r) * half + i]);
            out[i] = rotate ? a * cs - c * sn : a;
            out[i + half] = rotate ? c * cs + a * sn : c;
        }
        return out;
    };
    const std::string tag = std::string("rope_qkv ") + type_name<T>() + " d=" + std::to_string(d) + (bias ? " bias" : "");
    for (int r = 0; r < n; ++r) {
        for (int h = 0; h < heads; ++h)
            expect_close(tag + " q", q_out.data() + (size_t(h) * n + r) * d, expected(q, bq, heads, h, r, true),
                         tolerance<T>());
        for (int h = 0; h < kv; ++h) {
            const size_t at = (size_t(h) * capacity + start + r) * d;
            expect_close(tag + " k", k_cache.data() + at, expected(k, bk, kv, h, r, true), tolerance<T>());
            expect_close(tag + " v", v_cache.data() + at, expected(v, bv, kv, h, r, false), 0);
        }
    }
    for (int h = 0; h < kv; ++h)
        for (int p = 0; p < capacity; ++p) {
            if (p >= start && p < start + n) continue;
            const std::vector<double> untouched(d, 123.0);
            expect_close(tag + " cache outside the new positions", k_cache.data() + (size_t(h) * capacity + p) * d,
                         untouched, 0);
            expect_close(tag + " cache outside the new positions", v_cache.data() + (size_t(h) * capacity + p) * d,
                         untouched, 0);
        }
}

template <typename T, typename Partial, typename Combine>
static void check_attention(Partial partial_kernel, Combine combine, int d, int group, int total) {
    const int kv = 2, heads = kv * group, capacity = total + 7, chunks = (total + ATTN_CHUNK - 1) / ATTN_CHUNK;
    const float scale = 1.f / std::sqrt(float(d));
    auto q = random_values<T>(size_t(heads) * d, 2.f), k = random_values<T>(size_t(kv) * capacity * d, 2.f),
         v = random_values<T>(size_t(kv) * capacity * d);
    std::vector<float> partial(size_t(heads) * chunks * (d + 2));
    std::vector<T> out(size_t(heads) * d);
    launch({unsigned(kv), unsigned(chunks)}, {ATTN_WARPS * 32}, partial_kernel, q.data(), k.data(), v.data(),
           partial.data(), scale, group, d, total, capacity, chunks);
    launch({unsigned(heads)}, {warps_for(d)}, combine, partial.data(), out.data(), chunks, d);
    std::vector<double> want(size_t(heads) * d);
    for (int h = 0; h < heads; ++h) {
        const int kvh = h / group;
        std::vector<double> scores(total);
        double mx = -INFINITY;
        for (int p = 0; p < total; ++p) {
            double dot = 0;
            for (int e = 0; e < d; ++e)
                dot += double(to_f(q[size_t(h) * d + e])) * to_f(k[(size_t(kvh) * capacity + p) * d + e]);
            scores[p] = dot * scale;
            mx = std::max(mx, scores[p]);
        }
        double sum = 0;
        for (auto& s : scores) sum += (s = std::exp(s - mx));
        for (int e = 0; e < d; ++e) {
            double acc = 0;
            for (int p = 0; p < total; ++p) acc += scores[p] * to_f(v[(size_t(kvh) * capacity + p) * d + e]);
            want[size_t(h) * d + e] = acc / sum;
        }
    }
    const std::string tag = std::string("attention ") + type_name<T>() + " d=" + std::to_string(d) +
                            " group=" + std::to_string(group) + " positions=" + std::to_string(total);
    expect_close(tag, out.data(), want, sizeof(T) == 4 ? 1e-4 : 1e-2);
}

template <typename T, typename Kernel>
static void check_causal_softmax(Kernel kernel, int heads, int n, int start) {
    const int total = start + n, rows = heads * n;
    const float scale = 0.125f;
    auto scores = random_values<T>(size_t(rows) * total, 20.f);
    std::vector<T> out(scores.size());
    launch({unsigned(rows)}, {256}, kernel, scores.data(), out.data(), n, start, total, scale);
    std::vector<double> want(scores.size());
    for (int r = 0; r < rows; ++r) {
        const int visible = start + r % n + 1;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < visible; ++j) mx = std::max(mx, double(to_f(scores[size_t(r) * total + j])) * scale);
        for (int j = 0; j < visible; ++j) sum += std::exp(double(to_f(scores[size_t(r) * total + j])) * scale - mx);
        for (int j = 0; j < total; ++j)
            want[size_t(r) * total + j] =
                j < visible ? std::exp(double(to_f(scores[size_t(r) * total + j])) * scale - mx) / sum : 0.0;
    }
    expect_close(std::string("causal_softmax ") + type_name<T>() + " n=" + std::to_string(n) + " start=" +
                     std::to_string(start),
                 out.data(), want, tolerance<T>());
}

template <typename T, typename Kernel>
static void check_silu_mul(Kernel kernel) {
    const size_t n = 1000;
    auto gate = random_values<T>(n, 6.f), up = random_values<T>(n);
    std::vector<T> out(n);
    // Fewer threads than elements: the grid-stride loop must cover the rest.
    launch({2}, {256}, kernel, gate.data(), up.data(), out.data(), n);
    std::vector<double> want(n);
    for (size_t i = 0; i < n; ++i) {
        const double g = to_f(gate[i]);
        want[i] = g / (1 + std::exp(-g)) * to_f(up[i]);
    }
    expect_close(std::string("silu_mul ") + type_name<T>(), out.data(), want, tolerance<T>());
}

template <typename T, typename K>
static void check_all(const K& kernels) {
    check_add_rms_norm<T>(kernels.add_rms_norm, 3, 200);
    check_add_rms_norm<T>(kernels.add_rms_norm, 1, 2100);  // more elements than threads
    for (int d : {16, 64, 128})
        for (bool bias : {true, false}) check_rope_qkv<T>(kernels.rope_qkv, d, bias);
    for (int group : {1, 8})
        for (int total : {1, 150}) {  // one position; three chunks, the last one partial
            check_attention<T>(kernels.attn_32, kernels.combine, 16, group, total);
            check_attention<T>(kernels.attn_64, kernels.combine, 64, group, total);
            check_attention<T>(kernels.attn_128, kernels.combine, 128, group, total);
        }
    check_causal_softmax<T>(kernels.causal_softmax, 3, 5, 0);
    check_causal_softmax<T>(kernels.causal_softmax, 2, 4, 300);  // rows longer than the block
    check_silu_mul<T>(kernels.silu_mul);
}

#define KERNELS(SUFFIX)                                                                                 \
    struct {                                                                                            \
        decltype(&add_rms_norm_##SUFFIX) add_rms_norm = add_rms_norm_##SUFFIX;                          \
        decltype(&rope_qkv_##SUFFIX) rope_qkv = rope_qkv_##SUFFIX;                                      \
        decltype(&attn_partial_32_##SUFFIX) attn_32 = attn_partial_32_##SUFFIX;                         \
        decltype(&attn_partial_64_##SUFFIX) attn_64 = attn_partial_64_##SUFFIX;                         \
        decltype(&attn_partial_128_##SUFFIX) attn_128 = attn_partial_128_##SUFFIX;                      \
        decltype(&attn_combine_##SUFFIX) combine = attn_combine_##SUFFIX;                               \
        decltype(&causal_softmax_##SUFFIX) causal_softmax = causal_softmax_##SUFFIX;                    \
        decltype(&silu_mul_##SUFFIX) silu_mul = silu_mul_##SUFFIX;                                      \
    }

using F32Kernels = KERNELS(f32);
using Bf16Kernels = KERNELS(bf16);

int main() {
    check_all<float>(F32Kernels{});
    check_all<__nv_bfloat16>(Bf16Kernels{});
    std::printf("%s: %d failure(s)\n", failures ? "FAIL" : "ok", failures);
    return failures ? 1 : 0;
}
