// Whether this translation unit is compiled with AddressSanitizer (GCC: __SANITIZE_ADDRESS__,
// Clang: __has_feature(address_sanitizer)). ASan replaces the C library's allocator and refuses
// some dlopen() flags, so the few places that depend on either ask this macro.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define XMOE_ADDRESS_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define XMOE_ADDRESS_SANITIZER 1
#endif
#endif

#ifndef XMOE_ADDRESS_SANITIZER
#define XMOE_ADDRESS_SANITIZER 0
#endif
