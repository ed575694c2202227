// JPEG backend for builds without libjpeg-turbo (CMakeLists.txt picks it when the system
// library is not found): stb_image (v2.27, public domain / MIT, vendored in third_party/ from
// Debian's libstb-dev; its licence is at the end of that file), compiled with only the JPEG
// decoder; patched for malformed input (search "fastprune patch"), found by the sanitized fuzz
// run (scripts/sanitize).
//
// Why keep it: a plain `pip install` must build without system libraries. No PyPI wheel ships
// a usable libjpeg-turbo to link against (simplejpeg links it statically with hidden symbols,
// PyTurboJPEG ships none, Pillow/torchvision/imagecodecs ship only libjpeg.so without headers).
// stb_image has SSE2 IDCT/colour conversion and is fine for small images; at ImageNet sizes
// libjpeg-turbo decodes ~1.8x faster and can skip what a crop does not keep.
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

const char *jpeg_backend() { return "stb_image 2.27 (vendored)"; }

// stb_image cannot decode part of an image: decode it whole and describe the window inside it.
bool decode_jpeg_region(const uint8_t *data, size_t size, const JpegRequest &request, JpegRegion &out,
                        std::string &error) {
    if (size > static_cast<size_t>(std::numeric_limits<int>::max())) {
        error = "JPEG larger than 2 GiB";
        return false;
    }
    int width = 0, height = 0, channels = 0;
    if (stbi_info_from_memory(data, static_cast<int>(size), &width, &height, &channels) != 1) {
        error = "unreadable JPEG header";
        return false;
    }
    if (!check_jpeg_header(height, width, request, error) || !check_jpeg_stream(data, size, request, error))
        return false;
    out.pixels = stbi_load_from_memory(data, static_cast<int>(size), &width, &height, &channels, 3);
    if (out.pixels == nullptr) {
        const char *reason = stbi_failure_reason();  // thread-local in stb_image >= 2.26
        error = reason ? reason : "unknown JPEG error";
        return false;
    }
    if (!check_jpeg_header(height, width, request, error)) return false;  // the caller frees out.pixels
    out.rows = out.image_height = height;
    out.cols = out.image_width = width;
    bool whole = request.width <= 0;
    out.top = whole ? 0 : request.top;
    out.left = whole ? 0 : request.left;
    out.height = whole ? height : request.height;
    out.width = whole ? width : request.width;
    out.scale = 1;
    return true;
}

void free_decoded(uint8_t *pixels) { stbi_image_free(pixels); }

}  // namespace fastprune
