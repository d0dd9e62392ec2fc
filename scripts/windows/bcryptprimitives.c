/* A stand-in bcryptprimitives.dll for Wine 8, which lacks it; only `npm run test:windows` uses it.
   Rust's standard library (1.78 and later) imports ProcessPrng from it to seed HashMaps; every
   Windows 10 and 11 has the real one. This one draws the bytes from RtlGenRandom. */
#include <windows.h>

#define RtlGenRandom SystemFunction036
BOOLEAN WINAPI RtlGenRandom(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
  while (length > 0) {
    ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
    if (!RtlGenRandom(data, chunk)) return FALSE;
    data += chunk;
    length -= chunk;
  }
  return TRUE;
}
