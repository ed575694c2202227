// JPEG backend on libjpeg-turbo's libjpeg API (CMakeLists.txt builds it when the library is
// found). The libjpeg API, not TurboJPEG's, because only it can decode part of an image:
//   jpeg_crop_scanline   decode only the columns of the crop window (rounded out to iMCUs),
//   jpeg_skip_scanlines  skip the rows above it (and we stop reading below it),
//   scale_num/denom      let the IDCT downscale 1/2, 1/4 or 1/8 when the window is at least
//                        that many times larger than the output it is resampled to.
// Errors: libjpeg's default handler calls exit(); ours longjmps back to decode_region (a plain C
// frame: no C++ object lives across setjmp) and reports the message. Warnings that mean lost
// data (premature end of file or data segment) are errors too; other warnings are tolerated,
// as libjpeg recovers from them.
#include "jpeg_decode.hpp"

#include <algorithm>
#include <csetjmp>
#include <cstdio>  // jpeglib.h needs FILE
#include <cstdlib>
#include <cstring>

#include <jpeglib.h>
#include <jerror.h>

namespace fastprune {
namespace {

#define FASTPRUNE_STR2(x) #x
#define FASTPRUNE_STR(x) FASTPRUNE_STR2(x)

struct ErrorManager {
    jpeg_error_mgr pub;
    std::jmp_buf jump;
    char message[JMSG_LENGTH_MAX + 64];
};

[[noreturn]] void on_error(j_common_ptr cinfo) {
    auto *err = reinterpret_cast<ErrorManager *>(cinfo->err);
    (*cinfo->err->format_message)(cinfo, err->message);
    std::longjmp(err->jump, 1);
}

void on_message(j_common_ptr cinfo, int level) {
    if (level >= 0) return;  // trace messages
    int code = cinfo->err->msg_code;
    if (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER) on_error(cinfo);  // truncated / damaged data
    cinfo->err->num_warnings++;
}

// The largest IDCT downscale 1/s (s in 8, 4, 2, 1) that keeps the window >= the output size.
int pick_scale(const JpegRequest &r, int window_h, int window_w) {
    for (int s = 8; s > 1; s /= 2)
        if (window_h / s >= r.min_height && window_w / s >= r.min_width && r.min_height > 0 && r.min_width > 0)
            return s;
    return 1;
}

// Plain C-style body: everything the error path needs lives in `cinfo`, `err` or `out`.
bool decode_region(const uint8_t *data, size_t size, const JpegRequest &r, JpegRegion &out, char *message) {
    jpeg_decompress_struct cinfo;
    ErrorManager err;
    err.message[0] = '\0';
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        std::strcpy(message, err.message);
        return false;  // out.pixels (if any) is freed by the caller's owner
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
    jpeg_read_header(&cinfo, TRUE);
    out.image_height = int(cinfo.image_height);
    out.image_width = int(cinfo.image_width);
    {
        std::string header_error;  // destroyed before any later longjmp can happen
        if (!check_jpeg_header(out.image_height, out.image_width, r, header_error)) {
            std::snprintf(message, JMSG_LENGTH_MAX + 64, "%s", header_error.c_str());
            jpeg_destroy_decompress(&cinfo);
            return false;
        }
    }
    const bool whole = r.width <= 0;
    const int top = whole ? 0 : r.top, left = whole ? 0 : r.left;
    const int height = whole ? out.image_height : r.height, width = whole ? out.image_width : r.width;
    const int s = pick_scale(r, height, width);
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = unsigned(s);
    jpeg_start_decompress(&cinfo);
    // The window in scaled pixels (scaled pixel i covers full-resolution [i*s, (i+1)*s)). Columns
    // get a margin of 2: libjpeg upsamples chroma as if a cropped row ended at the image edge,
    // which would change the window's outer columns of a 4:2:0 / 4:2:2 image.
    const int y0 = top / s, y1 = std::min<int>((top + height + s - 1) / s, int(cinfo.output_height));
    JDIMENSION x0 = JDIMENSION(std::max(left / s - 2, 0));
    JDIMENSION cols = JDIMENSION(std::min<int>((left + width + s - 1) / s + 2, int(cinfo.output_width))) - x0;
    if (cols < cinfo.output_width) jpeg_crop_scanline(&cinfo, &x0, &cols);  // widens to iMCU bounds
    if (y0 > 0 && jpeg_skip_scanlines(&cinfo, JDIMENSION(y0)) != JDIMENSION(y0))
        ERREXIT(&cinfo, JERR_BAD_BUFFER_MODE);  // cannot happen for a valid y0; never read past it
    out.rows = y1 - y0;
    out.cols = int(cinfo.output_width);
    out.pixels = static_cast<uint8_t *>(std::malloc(size_t(out.rows) * out.cols * 3));
    if (!out.pixels) ERREXIT1(&cinfo, JERR_OUT_OF_MEMORY, 0);
    while (cinfo.output_scanline < JDIMENSION(y1)) {
        JSAMPROW row = out.pixels + size_t(cinfo.output_scanline - y0) * out.cols * 3;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_abort_decompress(&cinfo);  // rows below the window are never decoded
    jpeg_destroy_decompress(&cinfo);
    out.scale = s;
    out.top = double(top) / s - y0;
    out.left = double(left) / s - x0;
    out.height = double(height) / s;
    out.width = double(width) / s;
    return true;
}

}  // namespace

const char *jpeg_backend() { return "libjpeg-turbo " FASTPRUNE_STR(LIBJPEG_TURBO_VERSION); }

bool decode_jpeg_region(const uint8_t *data, size_t size, const JpegRequest &request, JpegRegion &out,
                        std::string &error) {
    char message[JMSG_LENGTH_MAX + 64];
    if (size == 0 || size > 0xFFFFFFFFull) {  // jpeg_mem_src takes an unsigned long; empty = no header
        error = size == 0 ? "empty JPEG stream" : "JPEG larger than 4 GiB";
        return false;
    }
    if (!check_jpeg_stream(data, size, request, error)) return false;
    if (decode_region(data, size, request, out, message)) return true;
    error = message;
    return false;
}

void free_decoded(uint8_t *pixels) { std::free(pixels); }

}  // namespace fastprune
