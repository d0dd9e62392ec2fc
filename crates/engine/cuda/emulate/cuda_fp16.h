// half for cuda_on_cpu.h, on the compiler's _Float16.
#pragma once
#include "cuda_on_cpu.h"
struct __half {
    _Float16 value;
};
inline float __half2float(__half x) { return float(x.value); }
inline __half __float2half(float f) { return {_Float16(f)}; }
