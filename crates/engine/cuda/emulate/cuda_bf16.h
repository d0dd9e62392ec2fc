// bfloat16 for cuda_on_cpu.h: storage and round-to-nearest-even conversion, as cuda_bf16.h has.
#pragma once
#include "cuda_on_cpu.h"
struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 x) {
    uint32_t u = uint32_t(x.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) return {uint16_t(0x7fc0)};
    u += 0x7fff + ((u >> 16) & 1);
    return {uint16_t(u >> 16)};
}
