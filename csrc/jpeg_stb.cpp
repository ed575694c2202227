// JPEG decoder: stb_image (v2.27, public domain / MIT, vendored in third_party/ from Debian's
// libstb-dev; its licence is at the end of that file), compiled with only the JPEG decoder; patched
// for malformed input (search "fastprune patch"), found by the sanitized fuzz run (scripts/sanitize).
//
// Why this route: the install must need no system library. We looked for a PyPI wheel that
// ships libturbojpeg.so with the TurboJPEG API exported, to dlopen it: simplejpeg links
// libjpeg-turbo statically with hidden symbols, PyTurboJPEG ships no library at all, and
// imagecodecs / Pillow / torchvision ship only the libjpeg API (libjpeg.so.8/.62), whose
// large struct layouts we would have to redeclare without a header. stb_image compiles with
// the module, has SSE2 IDCT/colour conversion, and decodes the small images this library
// targets at libjpeg-like speed; its output matches libjpeg's to within a few grey levels
// (tests/test_loader_native.py checks it against PIL).
#include "jpeg_decode.hpp"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_JPEG
#define STBI_NO_STDIO
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#include "third_party/stb_image.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#include <limits>

namespace fastprune {

uint8_t *decode_jpeg_rgb(const uint8_t *data, size_t size, int &width, int &height, std::string &error) {
    if (size > static_cast<size_t>(std::numeric_limits<int>::max())) {
        error = "JPEG larger than 2 GiB";
        return nullptr;
    }
    int channels = 0;
    uint8_t *pixels = stbi_load_from_memory(data, static_cast<int>(size), &width, &height, &channels, 3);
    if (pixels == nullptr) {
        const char *reason = stbi_failure_reason();  // thread-local in stb_image >= 2.26
        error = reason ? reason : "unknown JPEG error";
    }
    return pixels;
}

void free_decoded(uint8_t *pixels) { stbi_image_free(pixels); }

bool jpeg_dimensions(const uint8_t *data, size_t size, int &width, int &height) {
    if (size > static_cast<size_t>(std::numeric_limits<int>::max())) return false;
    int channels = 0;
    return stbi_info_from_memory(data, static_cast<int>(size), &width, &height, &channels) == 1;
}

}  // namespace fastprune
