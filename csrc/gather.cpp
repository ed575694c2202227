// Batch gather / decode for the loader.
//
// ImageGather holds read-only views of a memory-mapped store (the whole file as bytes, plus
// each sample's byte range, mode and size for one image field), validated once when built, and
// a persistent thread pool. Each call assembles one batch of selected samples into a
// caller-owned uint8 [B, H, W, 3] buffer with the GIL released:
//   gather(ids, out)              raw copy / JPEG decode; every sample must already be HxW.
//   gather_crops(ids, crops, out) read or decode, crop (top, left, h, w), bilinear resize; a
//                                 JPEG decodes only the window (see jpeg_decode.hpp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core.hpp"
#include "jpeg_decode.hpp"
#include "thread_pool.hpp"

namespace fastprune {
namespace {

constexpr uint8_t MODE_JPEG = 0;  // ffcv's IMAGE_MODES: 'jpg' = 0, 'raw' = 1
constexpr uint8_t MODE_RAW = 1;

using Batch4D = nb::ndarray<uint8_t, nb::ndim<4>, nb::c_contig, nb::device::cpu>;
using Crops2D = nb::ndarray<const int32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

std::string sample_name(int64_t id) { return "sample " + std::to_string(id); }

// A crop window in a pixel buffer (edge coordinates: fractional when the JPEG decoder
// downscaled in the IDCT, integral otherwise).
struct Window {
    const uint8_t *pixels;
    int rows, cols;  // the buffer
    double top, left, height, width;
};

// Horizontal taps of a bilinear resample: for output column x, source columns x0[x] and
// x0[x] + step[x] (step 0 at the clamped edge) and the 8-bit weight of the second.
struct Taps {
    std::vector<int> x0, step, frac;
};

Taps make_taps(double start, double length, int first, int last, int out_size) {
    Taps t;
    t.x0.resize(out_size);
    t.step.resize(out_size);
    t.frac.resize(out_size);
    for (int x = 0; x < out_size; ++x) {
        double sx = start + (x + 0.5) * length / out_size - 0.5;  // pixel-centre sampling
        sx = std::min(std::max(sx, double(first)), double(last));
        int x0 = std::min(int(sx), last);
        t.x0[x] = x0;
        t.step[x] = x0 < last ? 1 : 0;
        t.frac[x] = int(std::lround((sx - x0) * 256));
    }
    return t;
}

// Bilinear resize of a window into dst (out_h x out_w x 3), sampling at pixel centres (the
// convention of cv2.INTER_LINEAR / PIL), clamped to the pixels the window covers. Separable, in
// 8-bit fixed point: each output row blends two horizontally resampled source rows, which
// consecutive output rows mostly share. Within 1 grey level of the float formula.
void resize_window(const Window &win, uint8_t *dst, int out_h, int out_w) {
    const int top = int(win.top), left = int(win.left);
    if (win.top == top && win.left == left && win.height == out_h && win.width == out_w) {  // pure crop
        for (int y = 0; y < out_h; ++y)
            std::memcpy(dst + size_t(y) * out_w * 3, win.pixels + (size_t(top + y) * win.cols + left) * 3,
                        size_t(out_w) * 3);
        return;
    }
    auto last_of = [](double start, double length, int size) {
        return std::min(int(std::ceil(start + length)) - 1, size - 1);
    };
    Taps tx = make_taps(win.left, win.width, left, last_of(win.left, win.width, win.cols), out_w);
    Taps ty = make_taps(win.top, win.height, top, last_of(win.top, win.height, win.rows), out_h);
    std::vector<uint16_t> rows[2] = {std::vector<uint16_t>(size_t(out_w) * 3), std::vector<uint16_t>(size_t(out_w) * 3)};
    int cached[2] = {-1, -1};
    auto horizontal = [&](int src_row, int slot) {
        if (cached[slot] == src_row) return;
        const uint8_t *src = win.pixels + size_t(src_row) * win.cols * 3;
        uint16_t *row = rows[slot].data();
        for (int x = 0; x < out_w; ++x) {
            const uint8_t *a = src + size_t(tx.x0[x]) * 3, *b = a + tx.step[x] * 3;
            int f = tx.frac[x];
            for (int c = 0; c < 3; ++c) row[x * 3 + c] = uint16_t(a[c] * (256 - f) + b[c] * f);
        }
        cached[slot] = src_row;
    };
    for (int y = 0; y < out_h; ++y) {
        int y0 = ty.x0[y], y1 = y0 + ty.step[y], f = ty.frac[y];
        if (cached[1] == y0) {  // slide down: the old bottom row is the new top row
            std::swap(rows[0], rows[1]);
            std::swap(cached[0], cached[1]);
        }
        horizontal(y0, 0);
        horizontal(y1, 1);
        const uint16_t *a = rows[0].data(), *b = rows[1].data();
        uint8_t *out = dst + size_t(y) * out_w * 3;
        for (int i = 0; i < out_w * 3; ++i) out[i] = uint8_t((a[i] * (256 - f) + b[i] * f + 32768) >> 16);
    }
}

class ImageGather {
public:
    ImageGather(ROArray1D<uint8_t> buffer, ROArray1D<uint64_t> offsets, ROArray1D<uint64_t> sizes,
                ROArray1D<uint8_t> modes, ROArray1D<uint32_t> heights, ROArray1D<uint32_t> widths, size_t threads,
                uint64_t max_pixels)
        : buffer_(buffer), offsets_(offsets), sizes_(sizes), modes_(modes), heights_(heights), widths_(widths),
          max_pixels_(max_pixels), pool_(std::make_unique<ThreadPool>(threads == 0 ? 1 : threads)) {
        size_t n = offsets.shape(0);
        if (sizes.shape(0) != n || modes.shape(0) != n || heights.shape(0) != n || widths.shape(0) != n)
            fail_value("ImageGather: offsets, sizes, modes, heights and widths must have one entry per sample (got " +
                       std::to_string(n) + ", " + std::to_string(sizes.shape(0)) + ", " + std::to_string(modes.shape(0)) +
                       ", " + std::to_string(heights.shape(0)) + ", " + std::to_string(widths.shape(0)) + ")");
        for (size_t i = 0; i < n; ++i) validate_sample(i);
    }

    size_t num_samples() const { return offsets_.shape(0); }
    size_t threads() const { return pool_->size(); }
    uint64_t max_pixels() const { return max_pixels_; }

    void gather(ROArray1D<int64_t> ids, Batch4D out, size_t max_threads) {
        check_out(ids, out, "gather");
        const int out_h = int(out.shape(1)), out_w = int(out.shape(2));
        const size_t stride = size_t(out_h) * out_w * 3;
        const int64_t *id = ids.data();
        uint8_t *dst = out.data();
        nb::gil_scoped_release no_gil;
        run(ids.shape(0), max_threads, [&](size_t b) {
            int64_t s = checked_id(id[b], b);
            if (heights_.data()[s] != uint32_t(out_h) || widths_.data()[s] != uint32_t(out_w))
                fail_value("gather: " + sample_name(s) + " is " + std::to_string(heights_.data()[s]) + "x" +
                           std::to_string(widths_.data()[s]) + " but the batch is " + std::to_string(out_h) + "x" +
                           std::to_string(out_w) + "; all images of a batch must share a shape (use a resized crop "
                           "for datasets with several sizes)");
            if (modes_.data()[s] == MODE_RAW) {
                std::memcpy(dst + b * stride, buffer_.data() + offsets_.data()[s], stride);
            } else {
                JpegRegionOwner decoded;
                decode(s, JpegRequest{}, decoded.region);  // the whole image, checked to be out_h x out_w
                std::memcpy(dst + b * stride, decoded.region.pixels, stride);
            }
        });
    }

    void gather_crops(ROArray1D<int64_t> ids, Crops2D crops, Batch4D out, size_t max_threads) {
        check_out(ids, out, "gather_crops");
        if (crops.shape(0) != ids.shape(0) || crops.shape(1) != 4)
            fail_value("gather_crops: crops must be int32 [B, 4] (top, left, height, width) with B = len(ids) = " +
                       std::to_string(ids.shape(0)));
        const int out_h = int(out.shape(1)), out_w = int(out.shape(2));
        const size_t stride = size_t(out_h) * out_w * 3;
        const int64_t *id = ids.data();
        const int32_t *crop = crops.data();
        uint8_t *dst = out.data();
        nb::gil_scoped_release no_gil;
        run(ids.shape(0), max_threads, [&](size_t b) {
            int64_t s = checked_id(id[b], b);
            const int32_t *c = crop + b * 4;
            const int height = int(heights_.data()[s]), width = int(widths_.data()[s]);
            if (c[0] < 0 || c[1] < 0 || c[2] <= 0 || c[3] <= 0 || int64_t(c[0]) + c[2] > height ||
                int64_t(c[1]) + c[3] > width)
                fail_value("gather_crops: crop (top=" + std::to_string(c[0]) + ", left=" + std::to_string(c[1]) +
                           ", h=" + std::to_string(c[2]) + ", w=" + std::to_string(c[3]) + ") of batch row " +
                           std::to_string(b) + " is outside " + sample_name(s) + " (" + std::to_string(height) +
                           "x" + std::to_string(width) + ")");
            if (modes_.data()[s] == MODE_RAW) {
                Window win{buffer_.data() + offsets_.data()[s], height, width, double(c[0]), double(c[1]),
                           double(c[2]), double(c[3])};
                resize_window(win, dst + b * stride, out_h, out_w);
                return;
            }
            JpegRequest request;  // decode only the window, downscaled in the IDCT when it is >= 2x the output
            request.top = c[0], request.left = c[1], request.height = c[2], request.width = c[3];
            request.min_height = out_h, request.min_width = out_w;
            JpegRegionOwner decoded;
            decode(s, request, decoded.region);
            const JpegRegion &r = decoded.region;
            resize_window(Window{r.pixels, r.rows, r.cols, r.top, r.left, r.height, r.width}, dst + b * stride,
                          out_h, out_w);
        });
    }

private:
    // Every byte range must lie inside the file, and raw images must hold h*w*3 bytes: after
    // this check, the per-batch paths only need to check sample ids.
    void validate_sample(size_t i) const {
        uint64_t off = offsets_.data()[i], size = sizes_.data()[i], total = buffer_.shape(0);
        if (off > total || size > total - off)
            fail_index("ImageGather: " + sample_name(int64_t(i)) + " has byte range [" + std::to_string(off) + ", " +
                       std::to_string(off) + "+" + std::to_string(size) + ") outside the " + std::to_string(total) +
                       "-byte store");
        uint8_t mode = modes_.data()[i];
        uint64_t h = heights_.data()[i], w = widths_.data()[i];
        if (mode != MODE_RAW && mode != MODE_JPEG)
            fail_value("ImageGather: " + sample_name(int64_t(i)) + " has image mode " + std::to_string(mode) +
                       " (expected 0 = jpg or 1 = raw)");
        if (h == 0 || w == 0)
            fail_value("ImageGather: " + sample_name(int64_t(i)) + " has an empty image shape " + std::to_string(h) +
                       "x" + std::to_string(w));
        if (mode == MODE_RAW && size < h * w * 3)
            fail_value("ImageGather: raw " + sample_name(int64_t(i)) + " is " + std::to_string(h) + "x" +
                       std::to_string(w) + "x3 but its data holds only " + std::to_string(size) + " bytes");
    }

    int64_t checked_id(int64_t s, size_t row) const {
        if (s < 0 || uint64_t(s) >= num_samples())
            fail_index("sample id " + std::to_string(s) + " at batch row " + std::to_string(row) +
                       " is out of range for a store of " + std::to_string(num_samples()) + " samples");
        return s;
    }

    void check_out(const ROArray1D<int64_t> &ids, const Batch4D &out, const char *fn) const {
        if (out.shape(3) != 3)
            fail_value(std::string(fn) + ": out must be uint8 [B, H, W, 3], got last dimension " +
                       std::to_string(out.shape(3)));
        if (out.shape(0) < ids.shape(0))
            fail_value(std::string(fn) + ": out has room for " + std::to_string(out.shape(0)) + " images but ids has " +
                       std::to_string(ids.shape(0)));
    }

    // Decodes (part of) JPEG sample s. The header is checked against the metadata and the pixel
    // cap before the decoder allocates anything: a corrupted header must not make it allocate
    // (and fill) an image far larger than the one the metadata describes.
    void decode(int64_t s, JpegRequest request, JpegRegion &out) const {
        request.expect_height = heights_.data()[s];
        request.expect_width = widths_.data()[s];
        request.max_pixels = max_pixels_;
        std::string error;
        if (!decode_jpeg_region(buffer_.data() + offsets_.data()[s], sizes_.data()[s], request, out, error))
            fail_value("JPEG decode of " + sample_name(s) + " failed: " + error);
    }

    // One task per chunk of rows: few enough to keep pool overhead small, enough to balance.
    template <typename F>
    void run(size_t rows, size_t max_threads, F &&per_row) {
        size_t threads = max_threads == 0 ? pool_->size() : std::min(max_threads, pool_->size());
        size_t chunks = std::min(rows, threads * 4);
        if (chunks == 0) return;
        std::function<void(size_t)> task = [&](size_t c) {
            size_t begin = rows * c / chunks, end = rows * (c + 1) / chunks;
            for (size_t b = begin; b < end; ++b) per_row(b);
        };
        pool_->parallel_for(chunks, threads, task);
    }

    ROArray1D<uint8_t> buffer_;
    ROArray1D<uint64_t> offsets_, sizes_;
    ROArray1D<uint8_t> modes_;
    ROArray1D<uint32_t> heights_, widths_;
    uint64_t max_pixels_;
    std::unique_ptr<ThreadPool> pool_;
};

// One-off decode (tests, the converter's check of JPEGs it stores as they are): JPEG bytes ->
// uint8 [H, W, 3] numpy array; with min_height/min_width, DCT-downscaled (libjpeg-turbo) as far
// as keeps at least that size (a cheap full check of the entropy-coded data).
nb::ndarray<nb::numpy, uint8_t, nb::ndim<3>> decode_jpeg(ROArray1D<uint8_t> data, uint64_t max_pixels, int min_height,
                                                         int min_width) {
    std::string error;
    JpegRequest request;
    request.max_pixels = max_pixels;
    request.min_height = min_height;
    request.min_width = min_width;
    auto *owner = new JpegRegionOwner();
    bool ok;
    {
        nb::gil_scoped_release no_gil;
        ok = decode_jpeg_region(data.data(), data.shape(0), request, owner->region, error);
    }
    if (!ok) {
        delete owner;
        fail_value("decode_jpeg: " + error);
    }
    const JpegRegion &r = owner->region;
    nb::capsule capsule(owner, [](void *p) noexcept { delete static_cast<JpegRegionOwner *>(p); });
    return nb::ndarray<nb::numpy, uint8_t, nb::ndim<3>>(r.pixels, {size_t(r.rows), size_t(r.cols), 3}, capsule);
}

}  // namespace

void bind_loader(nb::module_ &m) {
    nb::class_<ImageGather>(m, "ImageGather",
                            "Assembles batches of one image field of a memory-mapped store (see csrc/gather.cpp).")
        .def(nb::init<ROArray1D<uint8_t>, ROArray1D<uint64_t>, ROArray1D<uint64_t>, ROArray1D<uint8_t>,
                      ROArray1D<uint32_t>, ROArray1D<uint32_t>, size_t, uint64_t>(),
             nb::arg("buffer"), nb::arg("offsets"), nb::arg("sizes"), nb::arg("modes"), nb::arg("heights"),
             nb::arg("widths"), nb::arg("threads") = 1, nb::arg("max_pixels") = DEFAULT_MAX_PIXELS)
        .def_prop_ro("num_samples", &ImageGather::num_samples)
        .def_prop_ro("threads", &ImageGather::threads)
        .def_prop_ro("max_pixels", &ImageGather::max_pixels)
        .def("gather", &ImageGather::gather, nb::arg("ids"), nb::arg("out"), nb::arg("max_threads") = 0,
             "Copy/decode samples ids into out[:len(ids)] (uint8 [B, H, W, 3]); all must be HxW.")
        .def("gather_crops", &ImageGather::gather_crops, nb::arg("ids"), nb::arg("crops"), nb::arg("out"),
             nb::arg("max_threads") = 0,
             "Read/decode samples ids, crop crops[b] = (top, left, h, w) and resize bilinearly into out[b].");
    m.def("decode_jpeg", &decode_jpeg, nb::arg("data"), nb::arg("max_pixels") = DEFAULT_MAX_PIXELS,
          nb::arg("min_height") = 0, nb::arg("min_width") = 0,
          "Decode JPEG bytes (uint8 1-D) to uint8 [H, W, 3] RGB.");
    m.attr("JPEG_BACKEND") = jpeg_backend();
    m.attr("DEFAULT_MAX_PIXELS") = DEFAULT_MAX_PIXELS;
}

}  // namespace fastprune
