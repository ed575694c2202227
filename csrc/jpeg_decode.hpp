// JPEG decoding for the loader. Two backends implement this header; CMakeLists.txt compiles one:
//   jpeg_turbo.cpp  libjpeg-turbo (system library, found at build time): crop-window and
//                   DCT-scaled decoding, so a RandomResizedCrop decodes only what it keeps;
//   jpeg_stb.cpp    the vendored stb_image: no system library needed; always decodes the whole
//                   image (the window is then cut from it by the resampler).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
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
    // Whether a progressive image's coefficient memory counts against max_pixels: the loader's
    // decoder holds them; a caller checking only decode time for another decoder sets it false.
    bool limit_coefficients = true;
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

// Limits on what decoding a stream may cost, which a header's size alone does not bound: a
// progressive JPEG decodes every block once per scan (a 250 KB stream of 1000 tiny scans over a
// 11584x11584 image took 25 s, uninterruptibly) and holds all coefficients in memory (2 bytes
// each: an 870-byte stream of AC scans made each decode allocate 1.2 GB).
constexpr int MAX_JPEG_SCANS = 500;         // real files have 1-3 (baseline), ~10 (progressive)
constexpr uint64_t MAX_SCAN_PASSES = 16;    // scans x pixels <= 16 x max_pixels

// Checks the stream's marker structure before a decoder starts, from the bytes alone: the scan
// count and scans x pixels against the limits above; a progressive image's coefficients plus its
// RGB output against 3 x max_pixels bytes (what a baseline image at the pixel cap takes); and
// that a Huffman-coded image holds at least one bit per 8x8 block of its largest component (no
// encoder writes less: every block's DC takes a code of >= 1 bit), which a truncated or crafted
// stream claiming a large size does not (stb_image pads missing data and reports success).
// Returns true when nothing is wrong, or when the structure is unclear: the decoder then reports
// damage itself.
inline bool check_jpeg_stream(const uint8_t *data, size_t size, const JpegRequest &r, std::string &error) {
    if (size < 4 || data[0] != 0xFF || data[1] != 0xD8) return true;
    int sof = -1;
    uint64_t height = 0, width = 0, scans = 0, entropy_bytes = 0;
    int components = 0, hmax = 0, vmax = 0, h[4] = {0}, v[4] = {0};
    size_t pos = 2;
    while (pos + 4 <= size && data[pos] == 0xFF) {
        const uint8_t marker = data[pos + 1];
        if (marker == 0xFF) { ++pos; continue; }  // a fill byte before a marker
        if (marker == 0xD9) break;                 // EOI
        if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) { pos += 2; continue; }  // no length
        const size_t length = size_t(data[pos + 2]) << 8 | data[pos + 3];
        if (length < 2 || length > size - pos - 2) return true;  // truncated: the decoder says so
        const uint8_t *segment = data + pos + 4;
        const bool is_sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
        if (is_sof && sof < 0 && length >= 8) {
            sof = marker - 0xC0;
            height = uint64_t(segment[1]) << 8 | segment[2];
            width = uint64_t(segment[3]) << 8 | segment[4];
            components = segment[5];
            if (components > 4 || length < 8 + 3 * size_t(components)) return true;
            for (int c = 0; c < components; ++c) {
                h[c] = segment[7 + 3 * c] >> 4;
                v[c] = segment[7 + 3 * c] & 15;
                hmax = std::max(hmax, h[c]);
                vmax = std::max(vmax, v[c]);
            }
        }
        pos += 2 + length;
        if (marker != 0xDA) continue;
        // SOS: entropy-coded data follows, up to the next marker that is not a restart marker
        // (FF00 is a stuffed FF byte, FFD0-FFD7 restart markers, FFFF fill)
        if (++scans > uint64_t(MAX_JPEG_SCANS)) {
            error = "JPEG has more than " + std::to_string(MAX_JPEG_SCANS) + " scans (a decoding-time bomb?)";
            return false;
        }
        const size_t start = pos;
        while (pos < size) {
            const void *ff = std::memchr(data + pos, 0xFF, size - pos);
            if (!ff) { pos = size; break; }
            pos = size_t(static_cast<const uint8_t *>(ff) - data);
            if (pos + 1 >= size) { pos = size; break; }
            const uint8_t next = data[pos + 1];
            if (next == 0x00 || (next >= 0xD0 && next <= 0xD7)) { pos += 2; continue; }
            if (next == 0xFF) { ++pos; continue; }
            break;
        }
        entropy_bytes += pos - start;
    }
    if (pos + 4 <= size && data[pos] != 0xFF) return true;  // junk between segments: libjpeg skips it
    if (sof < 0 || hmax == 0 || vmax == 0 || height == 0 || width == 0) return true;
    if (!check_jpeg_header(int(height), int(width), r, error)) return false;  // its messages first
    const uint64_t pixels = height * width;
    const std::string size_text = std::to_string(height) + "x" + std::to_string(width);
    if (scans * pixels > MAX_SCAN_PASSES * r.max_pixels) {
        error = "JPEG has " + std::to_string(scans) + " scans over " + size_text + " pixels: decoding would take " +
                std::to_string(scans) + " passes over the image, more than the limit of " +
                std::to_string(MAX_SCAN_PASSES) + " x max_image_pixels pixels in all";
        return false;
    }
    uint64_t largest_blocks = 0, all_blocks = 0;
    for (int c = 0; c < components; ++c) {
        const uint64_t rows = (height * uint64_t(v[c]) + uint64_t(vmax) - 1) / uint64_t(vmax);
        const uint64_t cols = (width * uint64_t(h[c]) + uint64_t(hmax) - 1) / uint64_t(hmax);
        const uint64_t blocks = ((rows + 7) / 8) * ((cols + 7) / 8);
        largest_blocks = std::max(largest_blocks, blocks);
        all_blocks += blocks;
    }
    const bool dct = sof != 3 && sof != 7 && sof != 11 && sof != 15;  // not lossless
    const bool huffman = sof < 8;
    const bool progressive = sof == 2 || sof == 6 || sof == 10 || sof == 14;
    if (dct && huffman && entropy_bytes * 8 < largest_blocks) {
        error = "JPEG holds " + std::to_string(entropy_bytes) + " bytes of image data, too few for a " + size_text +
                " image (at least one bit per 8x8 block): truncated or damaged";
        return false;
    }
    if (r.limit_coefficients && dct && progressive && all_blocks * 128 + pixels * 3 > r.max_pixels * 3) {
        error = "progressive JPEG of " + size_text + " needs " + std::to_string((all_blocks * 128 + pixels * 3) >> 20) +
                " MiB to decode (its coefficients are held in memory), more than the " +
                std::to_string((r.max_pixels * 3) >> 20) + " MiB that max_image_pixels allows";
        return false;
    }
    return true;
}

}  // namespace fastprune
