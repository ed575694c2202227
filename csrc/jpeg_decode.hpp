// JPEG decoding for the loader. Two backends implement this header; CMakeLists.txt compiles one:
//   jpeg_turbo.cpp  libjpeg-turbo (system library, found at build time): crop-window and
//                   DCT-scaled decoding, so a RandomResizedCrop decodes only what it keeps;
//   jpeg_stb.cpp    the vendored stb_image: no system library needed; always decodes the whole
//                   image (the window is then cut from it by the resampler).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace fastprune {

// Default cap on the pixels a JPEG header may claim (2^27 = 134M pixels, a 403 MB RGB image):
// a corrupted or hostile 600-byte stream can claim 65535x65535, and without the cap the
// decoder would allocate and fill gigabytes before noticing anything is wrong.
constexpr uint64_t DEFAULT_MAX_PIXELS = uint64_t(1) << 27;

// Which backend was compiled in, e.g. "libjpeg-turbo 2.1.5" or "stb_image 2.27 (vendored)".
const char *jpeg_backend();

// What to decode. The crop window is in full-resolution pixels; width 0 = the whole image.
struct JpegRequest {
    int top = 0, left = 0, height = 0, width = 0;
    // Output size the window will be resampled to: a backend that can downscale in the IDCT
    // picks the largest 1/2^k (k <= 3) that keeps the window at least this large.
    int min_height = 0, min_width = 0;
    // Header checks, before any pixel buffer is allocated: sizes the store's metadata gives
    // (0 = unknown) and the pixel cap.
    uint32_t expect_height = 0, expect_width = 0;
    uint64_t max_pixels = DEFAULT_MAX_PIXELS;
};

// The decoded region: a rows x cols RGB buffer holding (at least) the requested window, and
// where that window lies in it (edge coordinates; fractional when the IDCT downscaled).
struct JpegRegion {
    uint8_t *pixels = nullptr;  // malloc'd; free with free_decoded (JpegRegionOwner does it)
    int rows = 0, cols = 0;
    int image_height = 0, image_width = 0;  // full-resolution size from the header
    double top = 0, left = 0, height = 0, width = 0;
    int scale = 1;  // 1, 2, 4 or 8: the IDCT downscaling used
};

// Decodes what `request` asks for. Returns false and sets `error` (the decoder's reason, or the
// header check that failed) on any problem; never aborts the process.
bool decode_jpeg_region(const uint8_t *data, size_t size, const JpegRequest &request, JpegRegion &out,
                        std::string &error);
void free_decoded(uint8_t *pixels);

// Frees a region's pixels when it goes out of scope.
struct JpegRegionOwner {
    JpegRegion region;
    JpegRegionOwner() = default;
    JpegRegionOwner(const JpegRegionOwner &) = delete;
    JpegRegionOwner &operator=(const JpegRegionOwner &) = delete;
    ~JpegRegionOwner() {
        if (region.pixels) free_decoded(region.pixels);
    }
};

// The header checks both backends share: returns false with a message when the header's size
// disagrees with the metadata, exceeds the pixel cap, or does not contain the crop window.
inline bool check_jpeg_header(int h, int w, const JpegRequest &r, std::string &error) {
    auto size = [](uint64_t a, uint64_t b) { return std::to_string(a) + "x" + std::to_string(b); };
    if (h <= 0 || w <= 0) {
        error = "JPEG header claims an empty image (" + size(uint32_t(h), uint32_t(w)) + ")";
    } else if ((r.expect_height || r.expect_width) && (uint32_t(h) != r.expect_height || uint32_t(w) != r.expect_width)) {
        error = "decodes to " + size(h, w) + " but the store's metadata says " + size(r.expect_height, r.expect_width) +
                " (read from its header, before decoding)";
    } else if (uint64_t(h) * uint64_t(w) > r.max_pixels) {
        error = "JPEG header claims " + size(h, w) + " = " + std::to_string(uint64_t(h) * uint64_t(w)) +
                " pixels, more than the limit of " + std::to_string(r.max_pixels) + " (max_image_pixels)";
    } else if (r.width > 0 && (r.top < 0 || r.left < 0 || r.height <= 0 || int64_t(r.top) + r.height > h ||
                               int64_t(r.left) + r.width > w)) {
        error = "crop (top=" + std::to_string(r.top) + ", left=" + std::to_string(r.left) + ", h=" +
                std::to_string(r.height) + ", w=" + std::to_string(r.width) + ") is outside the " + size(h, w) + " image";
    } else {
        return true;
    }
    return false;
}

}  // namespace fastprune
